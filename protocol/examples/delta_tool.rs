//! Encode and apply Fleet layer deltas from the command line (for
//! `bench/delta.sh` and by hand).
//!
//! ```text
//! delta_tool encode [--level N] [--probe-level N] BASE.tar... TARGET.tar OUT.delta
//! delta_tool skeleton LAYER.tar OUT.skeleton
//! delta_tool apply OUT.delta BASE_DIR... TARGET.tar
//! ```
//!
//! `apply` maps the i-th BASE_DIR (an unpacked base layer) to the i-th
//! base the delta names, with `BASE_DIR.skeleton` (written by `skeleton`
//! from the base's tar, as a device does while unpacking) as its skeleton,
//! and checks the rebuilt tar against the diff_id in the delta's own header
//! (a device takes it from the signed release).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::time::Instant;

use anyhow::{Context, bail};
use fleet_protocol::delta::{self, DirBases, EncodeOptions, Limits};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("encode") => encode(&args[1..]),
        Some("apply") => apply(&args[1..]),
        Some("skeleton") => skeleton(&args[1..]),
        _ => bail!(
            "usage: delta_tool encode [--level N] [--probe-level N] BASE.tar... TARGET.tar OUT | skeleton LAYER.tar OUT | apply DELTA BASE_DIR... TARGET.tar"
        ),
    }
}

fn skeleton(args: &[String]) -> anyhow::Result<()> {
    let [layer, out] = args else {
        bail!("skeleton needs LAYER.tar OUT");
    };
    let input = BufReader::with_capacity(1 << 20, File::open(layer)?);
    let out = BufWriter::new(File::create(out).with_context(|| format!("creating {out}"))?);
    let start = Instant::now();
    let s = delta::skeleton(input, out)?;
    println!(
        "skeleton of {} ({} tar bytes): {} bytes, {:.2} s",
        s.diff_id,
        s.tar_bytes,
        s.len,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn encode(args: &[String]) -> anyhow::Result<()> {
    let mut opts = EncodeOptions::default();
    let mut args = args;
    loop {
        match args.first().map(String::as_str) {
            Some("--level") => {
                opts.level = args.get(1).context("--level needs a value")?.parse()?
            }
            Some("--probe-level") => {
                opts.probe_level = args
                    .get(1)
                    .context("--probe-level needs a value")?
                    .parse()?
            }
            _ => break,
        }
        args = &args[2..];
    }
    let [bases @ .., target, out] = args else {
        bail!("encode needs BASE.tar... TARGET.tar OUT");
    };
    let mut base_files = bases
        .iter()
        .map(|p| File::open(p).with_context(|| format!("opening {p}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let target = File::open(target).with_context(|| format!("opening {target}"))?;
    let out_file = BufWriter::new(File::create(out).with_context(|| format!("creating {out}"))?);
    let start = Instant::now();
    let e = delta::encode(&mut base_files, target, out_file, &opts)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "target {} ({} bytes): delta {} bytes ({:.3}%), copied {} patched {} literal {}, prefix {}, {:.2} s",
        e.target,
        e.target_size,
        e.delta_bytes,
        100.0 * e.delta_bytes as f64 / e.target_size.max(1) as f64,
        e.copied,
        e.patched,
        e.literal,
        e.prefix_len,
        secs
    );
    Ok(())
}

fn apply(args: &[String]) -> anyhow::Result<()> {
    let [delta_path, dirs @ .., target] = args else {
        bail!("apply needs DELTA BASE_DIR... TARGET.tar");
    };
    let limits = Limits::default();
    let header = delta::read_header(File::open(delta_path)?, &limits)?;
    if header.bases.len() != dirs.len() {
        bail!(
            "the delta names {} base layers, {} directories given",
            header.bases.len(),
            dirs.len()
        );
    }
    let mut bases = DirBases::new();
    for (id, dir) in header.bases.iter().zip(dirs) {
        bases.insert(id.clone(), dir);
        bases.set_skeleton(
            id.clone(),
            format!("{}.skeleton", dir.trim_end_matches('/')),
        );
    }
    let input = BufReader::with_capacity(1 << 20, File::open(delta_path)?);
    let out = BufWriter::with_capacity(1 << 20, File::create(target)?);
    let start = Instant::now();
    let applied = delta::apply(input, &bases, out, &header.target, &limits)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "rebuilt {} bytes, {} in {:.2} s ({:.1} MB/s)",
        applied.bytes,
        applied.sha256,
        secs,
        applied.bytes as f64 / 1e6 / secs.max(1e-9)
    );
    Ok(())
}
