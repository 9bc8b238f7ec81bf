//! The "bare libp2p-stream copy" ceiling: how fast one QUIC stream of the transport moves bytes
//! when nothing else (no framing, no hashing, no disk) is in the way.
//!
//! ```sh
//! cargo run --release -p node --example stream_copy -- 256
//! ```
//!
//! The argument is the MiB to copy (default 256). Both nodes run in this one process on one tokio
//! runtime, over 127.0.0.1, so the figures include both the sender's and the receiver's work
//! (encryption and decryption, UDP send and receive) and the CPU time is that of the whole
//! process. It copies the same bytes three times, in one run:
//!
//! 1. over a libp2p-stream with this crate's QUIC tuning (`QuicTuning::default()`),
//! 2. the same with libp2p-quic's default windows (10 MB per stream, 15 MB per connection),
//! 3. the same with small windows (1 MiB per stream, 2 MiB per connection), which shows whether
//!    the window matters at all on this path (on loopback it does not: the copy is CPU-bound),
//! 4. over a plain tokio TCP socket on loopback (no encryption): the baseline.
//!
//! An untimed 16 MiB warm-up copy runs first. Each copy writes from and reads into a reusable
//! 256 KiB buffer. MB is 10^6 bytes. CPU time is
//! utime + stime from `/proc/self/stat` (Linux; in USER_HZ = 100 ticks per second, so 10 ms
//! resolution), read without libc.

use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use node::net::{self, NetConfig, QuicTuning};
use tokio_util::compat::TokioAsyncReadCompatExt as _;

const BUFFER: usize = 256 * 1024;
/// Clock ticks per second of `/proc/self/stat`: USER_HZ, fixed at 100 by the Linux ABI on every
/// architecture this project runs on (`getconf CLK_TCK`).
const TICKS_PER_SECOND: f64 = 100.0;

/// What went wrong, in words: a benchmark reports and exits, it has no caller to recover.
type Failure = String;

/// Names the step that failed.
fn step<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> Result<T, Failure> {
    result.map_err(|error| format!("{what}: {error}"))
}

struct Measurement {
    label: &'static str,
    bytes: u64,
    wall: Duration,
    cpu: Duration,
}

impl Measurement {
    fn print(&self) {
        let megabytes = self.bytes as f64 / 1e6;
        let wall = self.wall.as_secs_f64();
        let cpu = self.cpu.as_secs_f64();
        let per_cpu_second = if cpu > 0.0 {
            format!("{:>10.0}", megabytes / cpu)
        } else {
            format!("{:>10}", "n/a")
        };
        println!(
            "{:<48} {:>7.3} s {:>9.1} MB/s {:>7.2} CPU-s {per_cpu_second} MB/CPU-s",
            self.label,
            wall,
            megabytes / wall,
            cpu
        );
    }
}

/// utime + stime of this process so far.
fn process_cpu_time() -> Result<Duration, Failure> {
    let stat = step(
        "reading /proc/self/stat",
        std::fs::read_to_string("/proc/self/stat"),
    )?;
    // The command name (field 2) is in parentheses and may contain spaces; fields are counted
    // from the last ')'. After it: state (3), …, utime (14), stime (15).
    let after_name = stat
        .rfind(')')
        .and_then(|end| stat.get(end + 2..))
        .ok_or("/proc/self/stat has no command name in parentheses")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> Result<f64, Failure> {
        fields
            .get(index)
            .and_then(|field| field.parse::<u64>().ok())
            .map(|ticks| ticks as f64)
            .ok_or_else(|| format!("/proc/self/stat: field {} is not a tick count", index + 3))
    };
    Ok(Duration::from_secs_f64(
        (ticks(11)? + ticks(12)?) / TICKS_PER_SECOND,
    ))
}

/// Reads `inbound` to its end; returns the bytes read.
async fn drain(mut inbound: impl AsyncRead + Unpin) -> Result<u64, Failure> {
    let mut buffer = vec![0_u8; BUFFER];
    let mut received = 0_u64;
    loop {
        let got = step("reading", inbound.read(&mut buffer).await)?;
        if got == 0 {
            return Ok(received);
        }
        received += got as u64;
    }
}

/// Writes `total` bytes into `outbound` and closes it while `receiver` drains the other end;
/// measures the whole copy.
async fn timed_copy(
    label: &'static str,
    mut outbound: impl AsyncWrite + Unpin,
    receiver: tokio::task::JoinHandle<Result<u64, Failure>>,
    total: u64,
) -> Result<Measurement, Failure> {
    let buffer = pattern_buffer();
    let cpu_before = process_cpu_time()?;
    let started = Instant::now();
    let mut sent = 0_u64;
    while sent < total {
        // At most BUFFER, which is a usize.
        let chunk = usize::try_from(total - sent).map_or(BUFFER, |left| left.min(BUFFER));
        step("writing", outbound.write_all(&buffer[..chunk]).await)?;
        sent += chunk as u64;
    }
    step("closing the stream", outbound.close().await)?;
    let received = step("the receiving task", receiver.await)??;
    let wall = started.elapsed();
    let cpu = process_cpu_time()?.saturating_sub(cpu_before);
    if received != total {
        return Err(format!("{label}: sent {total} bytes, received {received}"));
    }
    Ok(Measurement {
        label,
        bytes: total,
        wall,
        cpu,
    })
}

/// Copies `total` bytes over one libp2p-stream between two fresh nodes.
async fn libp2p_copy(
    label: &'static str,
    quic: QuicTuning,
    total: u64,
) -> Result<Measurement, Failure> {
    let listen: libp2p::Multiaddr =
        step("the listen address", "/ip4/127.0.0.1/udp/0/quic-v1".parse())?;
    let config = || NetConfig {
        listen: vec![listen.clone()],
        // mDNS would multicast on the machine's LAN; the benchmark stays on loopback.
        mdns: false,
        quic: quic.clone(),
        ..NetConfig::default()
    };
    let (receiver, _receiver_events, mut incoming) =
        step("starting the receiving node", net::start(config()).await)?;
    let (sender, _sender_events, _) =
        step("starting the sending node", net::start(config()).await)?;
    let address = receiver
        .listen_addrs()
        .await
        .into_iter()
        .next()
        .ok_or("the receiving node listens nowhere")?;
    let peer = step("dialling the receiver", sender.dial(address).await)?;
    let outbound = step("opening a stream", sender.open_stream(peer).await)?;
    let reader = tokio::spawn(async move {
        let (_, inbound) = incoming.next().await.ok_or("no inbound stream arrived")?;
        drain(inbound).await
    });
    let measured = timed_copy(label, outbound, reader, total).await;
    sender.shutdown().await;
    receiver.shutdown().await;
    measured
}

/// Copies `total` bytes over a plain TCP connection on loopback.
async fn tcp_copy(total: u64) -> Result<Measurement, Failure> {
    let listener = step(
        "binding a TCP listener",
        tokio::net::TcpListener::bind("127.0.0.1:0").await,
    )?;
    let address = step("the listener's address", listener.local_addr())?;
    let reader = tokio::spawn(async move {
        let (socket, _) = step("accepting TCP", listener.accept().await)?;
        drain(socket.compat()).await
    });
    let socket = step(
        "connecting TCP",
        tokio::net::TcpStream::connect(address).await,
    )?;
    // Closing the compat writer shuts down TCP's write half, which ends the reader.
    timed_copy(
        "plain tokio TCP, loopback (baseline)",
        socket.compat(),
        reader,
        total,
    )
    .await
}

fn pattern_buffer() -> Vec<u8> {
    (0..BUFFER)
        .map(|index| index.to_le_bytes()[0] ^ 0x5a)
        .collect()
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("stream_copy: {failure}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Failure> {
    let mebibytes: u64 = match std::env::args().nth(1) {
        None => 256,
        Some(text) => text
            .parse()
            .map_err(|_| format!("`{text}`: give the MiB to copy as a whole number"))?,
    };
    let total = mebibytes
        .checked_mul(1024 * 1024)
        .ok_or_else(|| format!("{mebibytes} MiB is more bytes than this benchmark can count"))?;
    let runtime = step(
        "starting the tokio runtime",
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    )?;
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "copying {mebibytes} MiB ({:.1} MB) over loopback, one process, {workers} tokio workers, {} KiB buffers",
        total as f64 / 1e6,
        BUFFER / 1024
    );
    let libp2p_defaults = QuicTuning {
        max_stream_data: 10_000_000,
        max_connection_data: 15_000_000,
        ..QuicTuning::default()
    };
    let small_windows = QuicTuning {
        max_stream_data: 1024 * 1024,
        max_connection_data: 2 * 1024 * 1024,
        ..QuicTuning::default()
    };
    let results = runtime.block_on(async {
        // Untimed: the first copy of a process pays for lazy initialisation (crypto provider,
        // thread-locals, allocator arenas), which would otherwise count against whichever
        // configuration runs first.
        libp2p_copy("warm-up", QuicTuning::default(), 16 * 1024 * 1024).await?;
        Ok::<_, Failure>(vec![
            libp2p_copy(
                "libp2p-stream over QUIC, depotmesh tuning",
                QuicTuning::default(),
                total,
            )
            .await?,
            libp2p_copy(
                "libp2p-stream over QUIC, libp2p default windows",
                libp2p_defaults,
                total,
            )
            .await?,
            libp2p_copy(
                "libp2p-stream over QUIC, 1 MiB windows",
                small_windows,
                total,
            )
            .await?,
            tcp_copy(total).await?,
        ])
    })?;
    for result in &results {
        result.print();
    }
    Ok(())
}
