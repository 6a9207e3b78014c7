//! Helpers shared by the CLI test files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The built `relayfs` binary, with its relay directory under `root`.
pub fn relayfs(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_relayfs"));
    c.env("RELAYFS_DIR", root);
    c
}

/// Runs a command that prints one JSON object.
pub fn run_json(cmd: &mut Command) -> (Output, Value) {
    let out = cmd.output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, v)
}

/// Waits (at most a minute) for `f` to hold.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(60), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A demo record as `relayfs demo` writes it (cpu field 0).
pub fn demo_record(writer: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(&0x3159_4C52u32.to_le_bytes());
    r.extend_from_slice(&(len as u32).to_le_bytes());
    r.extend_from_slice(&writer.to_le_bytes());
    r.extend_from_slice(&0u32.to_le_bytes());
    r.extend_from_slice(&seq.to_le_bytes());
    for i in 24..len {
        r.push((seq * 31 + writer as u64 * 17 + i as u64) as u8);
    }
    r
}

/// Whether a reader holds `cpu`'s buffer of `chan`.
pub fn reader_attached(chan: &relayfs::Channel, cpu: usize) -> bool {
    relayfs::RelayFile::inspect(chan.buffer_path(cpu)).is_ok_and(|s| s.reader_attached)
}

/// Where `name` is on `PATH` (or in the system directories a root shell
/// has), if anywhere.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}
