//! Builds one delta with the library's defaults and prints its summary: a quick way to try the
//! creator without the origin (`origin delta` is the operator's command).
//!
//! ```sh
//! cargo run --release -p delta --example create -- OLD NEW OUT [--no-references] [--exhaustive]
//! ```

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [old, new, out] = paths[..] else {
        return Err("usage: create OLD NEW OUT [--no-references] [--exhaustive]".into());
    };
    let options = delta::DeltaOptions {
        references: !args.iter().any(|a| a == "--no-references"),
        exhaustive: args.iter().any(|a| a == "--exhaustive"),
        ..Default::default()
    };
    let summary = delta::create(
        &PathBuf::from(old),
        &PathBuf::from(new),
        &PathBuf::from(out),
        &options,
    )?;
    println!(
        "{} bytes ({:.2} % of the target) in {:.2} s; segments {:?}; references {:?}, {} segments corrected",
        summary.delta_len,
        100.0 * summary.delta_len as f64 / summary.target.1.max(1) as f64,
        summary.seconds,
        summary.methods,
        summary.references,
        summary.corrected_segments,
    );
    Ok(())
}
