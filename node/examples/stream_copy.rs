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

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use node::net::{self, NetConfig, QuicTuning};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BUFFER: usize = 256 * 1024;
/// Clock ticks per second of `/proc/self/stat`: USER_HZ, fixed at 100 by the Linux ABI on every
/// architecture this project runs on (`getconf CLK_TCK`).
const TICKS_PER_SECOND: f64 = 100.0;

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
fn process_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // The command name (field 2) is in parentheses and may contain spaces; fields are counted
    // from the last ')'. After it: state (3), …, utime (14), stime (15).
    let after_name = &stat[stat.rfind(')').expect("')' in /proc/self/stat") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> f64 {
        fields[index]
            .parse::<u64>()
            .expect("numeric tick count in /proc/self/stat") as f64
    };
    Duration::from_secs_f64((ticks(11) + ticks(12)) / TICKS_PER_SECOND)
}

/// Copies `total` bytes over one libp2p-stream between two fresh nodes.
async fn libp2p_copy(label: &'static str, quic: QuicTuning, total: u64) -> Measurement {
    let config = || NetConfig {
        listen: vec![
            "/ip4/127.0.0.1/udp/0/quic-v1"
                .parse()
                .expect("valid multiaddr"),
        ],
        // mDNS would multicast on the machine's LAN; the benchmark stays on loopback.
        mdns: false,
        quic: quic.clone(),
        ..NetConfig::default()
    };
    let (receiver, _receiver_events, mut incoming) =
        net::start(config()).await.expect("start receiving node");
    let (sender, _sender_events, _) = net::start(config()).await.expect("start sending node");
    let address = receiver
        .listen_addrs()
        .await
        .into_iter()
        .next()
        .expect("receiver listens");
    let peer = sender.dial(address).await.expect("dial receiver");
    let mut outbound = sender.open_stream(peer).await.expect("open stream");

    let reader = tokio::spawn(async move {
        let (_, mut inbound) = incoming.next().await.expect("inbound stream");
        let mut buffer = vec![0_u8; BUFFER];
        let mut received = 0_u64;
        loop {
            let got = inbound.read(&mut buffer).await.expect("read stream");
            if got == 0 {
                break received;
            }
            received += u64::try_from(got).expect("usize fits u64");
        }
    });

    let buffer = pattern_buffer();
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    let mut sent = 0_u64;
    while sent < total {
        let chunk = usize::try_from((total - sent).min(BUFFER as u64)).expect("chunk fits usize");
        outbound
            .write_all(&buffer[..chunk])
            .await
            .expect("write stream");
        sent += u64::try_from(chunk).expect("usize fits u64");
    }
    outbound.close().await.expect("close stream");
    let received = reader.await.expect("reader task");
    let wall = started.elapsed();
    let cpu = process_cpu_time().saturating_sub(cpu_before);
    assert_eq!(received, total, "receiver got every byte");

    sender.shutdown().await;
    receiver.shutdown().await;
    Measurement {
        label,
        bytes: total,
        wall,
        cpu,
    }
}

/// Copies `total` bytes over a plain TCP connection on loopback.
async fn tcp_copy(total: u64) -> Measurement {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind TCP listener");
    let address = listener.local_addr().expect("listener address");
    let reader = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept TCP");
        let mut buffer = vec![0_u8; BUFFER];
        let mut received = 0_u64;
        loop {
            let got = socket.read(&mut buffer).await.expect("read TCP");
            if got == 0 {
                break received;
            }
            received += u64::try_from(got).expect("usize fits u64");
        }
    });
    let mut socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect TCP");

    let buffer = pattern_buffer();
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    let mut sent = 0_u64;
    while sent < total {
        let chunk = usize::try_from((total - sent).min(BUFFER as u64)).expect("chunk fits usize");
        socket.write_all(&buffer[..chunk]).await.expect("write TCP");
        sent += u64::try_from(chunk).expect("usize fits u64");
    }
    socket.shutdown().await.expect("shut down TCP write half");
    let received = reader.await.expect("reader task");
    let wall = started.elapsed();
    let cpu = process_cpu_time().saturating_sub(cpu_before);
    assert_eq!(received, total, "receiver got every byte");
    Measurement {
        label: "plain tokio TCP, loopback (baseline)",
        bytes: total,
        wall,
        cpu,
    }
}

fn pattern_buffer() -> Vec<u8> {
    (0..BUFFER)
        .map(|index| index.to_le_bytes()[0] ^ 0x5a)
        .collect()
}

fn main() {
    let mebibytes: u64 = std::env::args()
        .nth(1)
        .map(|text| text.parse().expect("argument: MiB to copy, a whole number"))
        .unwrap_or(256);
    let total = mebibytes * 1024 * 1024;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
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
        libp2p_copy("warm-up", QuicTuning::default(), 16 * 1024 * 1024).await;
        vec![
            libp2p_copy(
                "libp2p-stream over QUIC, depotmesh tuning",
                QuicTuning::default(),
                total,
            )
            .await,
            libp2p_copy(
                "libp2p-stream over QUIC, libp2p default windows",
                libp2p_defaults,
                total,
            )
            .await,
            libp2p_copy(
                "libp2p-stream over QUIC, 1 MiB windows",
                small_windows,
                total,
            )
            .await,
            tcp_copy(total).await,
        ]
    });
    for result in &results {
        result.print();
    }
}
