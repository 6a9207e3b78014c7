//! Instructions an event, counted by valgrind's callgrind: the emitting
//! thread's cost of `info!(a = 1, b = "x", "message")` with the relay layer
//! (and with a bare registry, `tracing`'s own dispatch), and the decoder's
//! cost an event, text and JSON. Unlike the wall clock of the `emit`
//! benchmark these counts do not move with the machine's load, so they
//! compare two versions of the code on a busy machine.
//!
//! `cargo bench -p relayfs-tracing --bench instructions`
//!
//! Each scenario runs this program again under
//! `valgrind --tool=callgrind`, counting only inside the scenario's loop,
//! once with N and once with 2N events; the difference divided by N is the
//! cost of one event, without the one-time costs (registering the
//! callsite, the thread-locals, the decoder's start). Without valgrind it
//! says so loudly and does nothing (and fails with `CI=true`).

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use relayfs::{Channel, OverwriteCallbacks, RelayFile};
use relayfs_tracing::RelayLayer;
use tracing_subscriber::prelude::*;

const SCENARIOS: [&str; 4] = ["relay_layer", "dispatch_only", "decode_text", "decode_json"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--scenario") {
        let name = &args[i + 1];
        let n: u64 = args[i + 2].parse().expect("a count");
        scenario(name, n);
        return;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("*** valgrind is not installed: no instruction counts ***");
        // With CI=true a missing tool is a failure, as in the tests.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "valgrind is missing"
        );
        return;
    }
    let filter: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    const N: u64 = 20_000;
    for name in SCENARIOS {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let one = count(dir.path(), name, N);
        let two = count(dir.path(), name, 2 * N);
        println!(
            "{name}: {:.1} instructions an event",
            two.saturating_sub(one) as f64 / N as f64
        );
    }
}

/// The instructions callgrind counted inside the scenario's loop.
fn count(dir: &Path, name: &str, n: u64) -> u64 {
    let out = dir.join(format!("{name}.{n}.callgrind"));
    let exe = std::env::current_exe().expect("this program");
    let st = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--collect-atstart=no")
        .arg("--toggle-collect=*measured_*")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .args(["--scenario", name, &n.to_string()])
        .env("RELAYFS_DIR", dir)
        .output()
        .expect("valgrind runs");
    assert!(
        st.status.success(),
        "valgrind failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("callgrind's output");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a summary line")
}

fn scenario(name: &str, n: u64) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    match name {
        "relay_layer" => {
            let chan = Arc::new(
                Channel::builder("insn")
                    .dir(dir.path())
                    .subbuf_size(1 << 20)
                    .n_subbufs(8)
                    .callbacks(OverwriteCallbacks)
                    .open()
                    .expect("a channel"),
            );
            let d = tracing::Dispatch::new(
                tracing_subscriber::registry().with(RelayLayer::new(chan.clone())),
            );
            tracing::dispatcher::with_default(&d, || {
                // The callsite registered and the thread-locals made
                // before counting starts.
                tracing::info!(a = 1, b = "x", "message");
                measured_emit(n);
            });
            drop(d);
            chan.close().expect("closed");
        }
        "dispatch_only" => {
            let d = tracing::Dispatch::new(tracing_subscriber::registry());
            tracing::dispatcher::with_default(&d, || measured_emit(n));
        }
        "decode_text" | "decode_json" => {
            let bytes = recording(dir.path(), n);
            measured_decode(bytes, name == "decode_json", n);
        }
        _ => panic!("unknown scenario {name}"),
    }
}

#[inline(never)]
fn measured_emit(n: u64) {
    for _ in 0..n {
        tracing::info!(a = 1, b = "x", "message");
    }
}

#[inline(never)]
fn measured_decode(bytes: Vec<u8>, json: bool, n: u64) {
    let src: Box<dyn Read> = Box::new(std::io::Cursor::new(bytes));
    let mut sink = std::io::sink();
    let s = relayfs_tracing::decode::decode_streams(
        vec![("cpu0".into(), src)],
        json,
        &mut sink,
        &mut |p| panic!("{p}"),
    )
    .expect("decoded");
    assert_eq!(s.events, n);
}

/// A recording of `n` events `info!(a = i, b = "x", "message")`, as the
/// bytes of its one buffer.
fn recording(dir: &Path, n: u64) -> Vec<u8> {
    let chan = Arc::new(
        Channel::builder("decode")
            .dir(dir)
            .subbuf_size(4 << 20)
            .n_subbufs(4)
            .global(true)
            .open()
            .expect("a channel"),
    );
    let mut reader = RelayFile::open(chan.buffer_path(0)).expect("a reader");
    let d =
        tracing::Dispatch::new(tracing_subscriber::registry().with(RelayLayer::new(chan.clone())));
    tracing::dispatcher::with_default(&d, || {
        for i in 0..n {
            tracing::info!(a = i, b = "x", "message");
        }
    });
    chan.close().expect("closed");
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).expect("read");
    bytes
}
