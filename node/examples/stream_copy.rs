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
//! 1. over a libp2p-stream on this crate's QUIC transport with its tuning (`QuicTuning::default()`:
//!    AES-GCM first where the CPU has AES instructions, ACKs every 8 packets, 16 MiB send window),
//! 2. the same listing ChaCha20-Poly1305 first (what a CPU without AES instructions gets),
//! 3. the same with QUIC's default ACK of every second packet,
//! 4. over libp2p's own QUIC transport (`libp2p::quic`, as shipped: ChaCha20 first, its default
//!    windows), the transport this crate used before it had its own,
//! 5. over a plain tokio TCP socket on loopback (no encryption): the baseline.
//!
//! (Window sizes were compared here before: on loopback they make no difference, the copy is
//! CPU-bound; see `QuicTuning::default`.)
//!
//! An untimed 16 MiB warm-up copy runs first. Each copy writes from and reads into a reusable
//! 256 KiB buffer. MB is 10^6 bytes. CPU time is
//! utime + stime from `/proc/self/stat` (Linux; in USER_HZ = 100 ticks per second, so 10 ms
//! resolution), read without libc.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::swarm::SwarmEvent;
use node::net::{self, CipherPreference, NetConfig, QuicTuning};
use tokio_util::compat::TokioAsyncReadCompatExt as _;

const BUFFER: usize = 256 * 1024;

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
    node::clock::process_cpu().ok_or_else(|| "/proc/self/stat is unreadable".to_owned())
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

/// Starts a node on libp2p's own QUIC transport, listening on loopback and dialling `dial`;
/// returns its address, its stream control and its inbound streams (its swarm runs in a task of
/// its own).
async fn stock_node(
    dial: Option<libp2p::Multiaddr>,
) -> Result<
    (
        libp2p::Multiaddr,
        libp2p_stream::Control,
        libp2p_stream::IncomingStreams,
    ),
    Failure,
> {
    let Ok(builder) = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new());
    let mut swarm = builder.build();
    let listen: libp2p::Multiaddr =
        step("the listen address", "/ip4/127.0.0.1/udp/0/quic-v1".parse())?;
    step("listening", swarm.listen_on(listen))?;
    let address = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address.with(libp2p::multiaddr::Protocol::P2p(*swarm.local_peer_id()));
        }
    };
    if let Some(dial) = dial {
        step("dialling the stock receiver", swarm.dial(dial))?;
    }
    let mut control = swarm.behaviour().new_control();
    let protocol = libp2p::StreamProtocol::new(proto::wire::PROTOCOL_ID);
    let incoming = step("accepting the protocol", control.accept(protocol))?;
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    Ok((address, control, incoming))
}

/// Copies `total` bytes over one libp2p-stream between two nodes on libp2p's own QUIC transport.
async fn stock_copy(total: u64) -> Result<Measurement, Failure> {
    let (address, _, mut incoming) = stock_node(None).await?;
    let Some(libp2p::multiaddr::Protocol::P2p(peer)) = address.iter().last() else {
        return Err("the stock node's address names no peer".to_owned());
    };
    let (_, mut sender, _) = stock_node(Some(address)).await?;
    let protocol = libp2p::StreamProtocol::new(proto::wire::PROTOCOL_ID);
    let reader = tokio::spawn(async move {
        let (_, inbound) = incoming.next().await.ok_or("no inbound stream arrived")?;
        drain(inbound).await
    });
    // The dial above runs in the sender's task: open once it has connected.
    let mut tries = 0;
    let outbound = loop {
        match sender.open_stream(peer, protocol.clone()).await {
            Ok(stream) => break stream,
            Err(error) if tries < 100 => {
                tries += 1;
                if tries == 100 {
                    return Err(format!("opening a stream to the stock receiver: {error}"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => return Err(format!("opening a stream to the stock receiver: {error}")),
        }
    };
    timed_copy(
        "libp2p-stream over libp2p's own QUIC (ChaCha20)",
        outbound,
        reader,
        total,
    )
    .await
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
    let chacha_first = QuicTuning {
        ciphers: CipherPreference::ChaCha20,
        ..QuicTuning::default()
    };
    let ack_every_second = QuicTuning {
        ack_every: None,
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
            libp2p_copy("the same, ChaCha20 listed first", chacha_first, total).await?,
            libp2p_copy("the same, ACK every second packet", ack_every_second, total).await?,
            stock_copy(total).await?,
            tcp_copy(total).await?,
        ])
    })?;
    for result in &results {
        result.print();
    }
    Ok(())
}
