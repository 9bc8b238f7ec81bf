//! Outboard overhead and encode / verify throughput of bao-verified streaming, against plain
//! BLAKE3 hashing (the floor for any verification) and a memory copy, in the same run.
//!
//! ```text
//! cargo run --release -p proto --example bao_throughput -- [SIZE_MIB] [ROUNDS]
//! ```
//! Defaults: a 256 MiB blob, best of 3 rounds. Everything runs on one thread.

use std::time::{Duration, Instant};

use proto::BlobId;
use proto::bao::{self, ExpectedSize, Layout, Outboard, VerifiedReader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let size_mib: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(256);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    if size_mib == 0 || rounds == 0 {
        return Err("SIZE_MIB and ROUNDS must be at least 1".into());
    }
    let size = usize::try_from(size_mib << 20)?;
    println!("blob: {size_mib} MiB of pseudo-random bytes, best of {rounds} rounds, one thread");
    let data = pseudo_random(size);
    let mut copy = vec![0u8; size];

    let best = |f: &mut dyn FnMut()| -> Duration {
        (0..rounds)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .min()
            .unwrap_or_default()
    };
    let rate = |elapsed: Duration| size as f64 / 1e6 / elapsed.as_secs_f64();

    let memcpy = best(&mut || copy.copy_from_slice(&data));
    let mut id = BlobId::of(b"");
    let hash = best(&mut || id = BlobId::of(&data));
    println!();
    println!("{:<44} {:>10}", "baseline", "MB/s");
    println!("{:<44} {:>10.0}", "memory copy", rate(memcpy));
    println!(
        "{:<44} {:>10.0}",
        "blake3::hash (single-threaded)",
        rate(hash)
    );

    println!();
    println!(
        "{:<12} {:>12} {:>12} {:>14} {:>14} {:>14}",
        "groups", "outboard %", "wire %", "outboard MB/s", "encode MB/s", "verify MB/s"
    );
    for (name, layout) in [
        ("16 KiB", Layout::MESH),
        ("1 KiB (bao)", Layout::BAO_STANDARD),
    ] {
        let mut outboard = Outboard::create(&data[..1], layout);
        let make = best(&mut || outboard = Outboard::create(&data, layout));
        assert_eq!(outboard.id(), id, "root differs from blake3::hash");

        let groups = layout.all_groups(size as u64);
        // As a server does: into a body kept from one response to the next.
        let mut body = bao::ResponseBody::default();
        let encode = best(&mut || {
            body.clear();
            bao::encode_ranges_into(&data[..], &outboard, &groups, &mut body).expect("encode");
        });
        let encoded = body.bytes();

        let verify = best(&mut || {
            let reader = VerifiedReader::new(
                id,
                layout,
                &groups,
                ExpectedSize::Exactly(size as u64),
                encoded,
            )
            .expect("header");
            reader
                .for_each_group(|offset, bytes| {
                    let start = usize::try_from(offset).unwrap_or(0);
                    copy[start..start + bytes.len()].copy_from_slice(bytes);
                    Ok(())
                })
                .expect("verify");
        });
        assert!(copy == data, "verified copy differs");

        let outboard_pct = 100.0 * outboard.data().len() as f64 / size as f64;
        let wire_pct = 100.0 * (encoded.len() - size) as f64 / size as f64;
        println!(
            "{:<12} {:>12.3} {:>12.3} {:>14.0} {:>14.0} {:>14.0}",
            name,
            outboard_pct,
            wire_pct,
            rate(make),
            rate(encode),
            rate(verify)
        );
    }
    println!();
    println!("outboard % = parent pairs stored per blob byte; wire % = response bytes beyond the");
    println!("blob (size header + parent pairs); verify = read, check and copy out every group.");
    Ok(())
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
