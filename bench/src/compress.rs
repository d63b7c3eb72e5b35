//! How fast an artifact's bytes are compressed: one gzip stream (flate2, as
//! `gzip -6`) against ours (`ParallelGzip`, every core, as `pigz -6`) and
//! zstd -3 on every core, over compressible text (table dumps, documents)
//! and incompressible bytes (images), `--mib` of each (default 256).
//!
//!   cargo build --release -p supascale-bench
//!   target/release/bench-compress [--mib 256]

use std::io::Write;
use std::time::Instant;

use supascale_shared::artifact::ParallelGzip;

fn main() {
    let mut mib = 256usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--mib", Some(n)) => mib = n.parse().expect("--mib N"),
            _ => panic!("usage: bench-compress [--mib N]"),
        }
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("compression, {mib} MiB per input, {cores} cores");
    let text: Vec<u8> = (0..mib * 1024 * 1024 / 64)
        .flat_map(|i| {
            format!(
                "{i:>10} post title — lorem ipsum dolor sit amet {:08x}\n",
                i * 7919
            )
            .into_bytes()
        })
        .take(mib * 1024 * 1024)
        .collect();
    let mut random = vec![0u8; mib * 1024 * 1024];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in random.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    for (name, input) in [("text", &text), ("random", &random)] {
        let measure = |label: &str, compress: &dyn Fn(&[u8]) -> usize| {
            let started = Instant::now();
            let size = compress(input);
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "  {name:<7} {label:<22} {:>7.1} MiB/s   ratio {:>5.3}",
                input.len() as f64 / 1048576.0 / seconds,
                size as f64 / input.len() as f64
            );
        };
        measure("gzip -6, one thread", &|data| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            for chunk in data.chunks(256 * 1024) {
                e.write_all(chunk).unwrap();
            }
            e.finish().unwrap().len()
        });
        measure("gzip -6, ours (pigz)", &|data| {
            let mut e = ParallelGzip::new(Vec::new(), 6, cores);
            for chunk in data.chunks(256 * 1024) {
                e.write_all(chunk).unwrap();
            }
            e.finish().unwrap().len()
        });
        measure("zstd -3, every core", &|data| {
            let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            e.multithread(cores as u32).unwrap();
            for chunk in data.chunks(256 * 1024) {
                e.write_all(chunk).unwrap();
            }
            e.finish().unwrap().len()
        });
    }
}
