//! The command line's edges: bad numbers refused before anything starts,
//! hang-ups ending a run as cleanly as Ctrl-C, a closed standard output,
//! and `ls` on odd names and unreadable directories.

use std::path::Path;
use std::process::{Output, Stdio};

mod common;
use common::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether anything at all exists under `p`.
fn anything_under(p: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            found.push(e.path().display().to_string());
            found.extend(anything_under(&e.path()));
        }
    }
    found
}

#[test]
fn every_bad_number_is_refused_before_anything_starts() {
    // (subcommand and its other arguments, the bad flag, the bad values)
    let table: &[(&[&str], &str, &[&str])] = &[
        (
            &["bench"],
            "--duration",
            &["-1", "0", "nan", "inf", "1e300", "x"],
        ),
        (&["bench"], "--rate", &["0", "-5", "nan", "inf", "1e300"]),
        (&["bench"], "--threads", &["0", "-1", "100000"]),
        (&["bench"], "--count", &["0", "-1", "18446744073709551615"]),
        (&["bench"], "--size", &["0", "10", "100..50", "8G"]),
        (&["bench"], "--subbuf-size", &["0", "3000", "32", "2G"]),
        (&["bench"], "--n-subbufs", &["0", "-1", "99999999"]),
        (&["bench", "--sweep"], "--duration", &["-1", "nan"]),
        (&["demo"], "--count", &["0", "-3", "18446744073709551615"]),
        (&["demo"], "--threads", &["0", "-1", "100000"]),
        (&["demo"], "--size", &["0", "23", "64..32"]),
        (&["demo"], "--subbuf-size", &["0", "100", "1T"]),
        (&["demo"], "--n-subbufs", &["0", "2000000"]),
        (
            &["demo", "--no-record"],
            "--attach-timeout",
            &["-1", "0", "nan", "1e300"],
        ),
        (
            &["record", "chan", "-o", "OUT"],
            "--duration",
            &["-1", "0", "nan", "inf"],
        ),
        (
            &["record", "chan", "-o", "OUT"],
            "--max-size",
            &["0", "-1", "1Q"],
        ),
        (
            &["record", "chan", "-o", "OUT", "--max-size", "1M"],
            "--max-files",
            &["0", "-1"],
        ),
        (
            &["blktrace", "/dev/null", "-o", "OUT"],
            "--duration",
            &["-1", "0", "nan", "inf"],
        ),
        (
            &["blktrace", "/dev/null", "-o", "OUT"],
            "--subbuf-size",
            &["0", "5G"],
        ),
        (
            &["blktrace", "/dev/null", "-o", "OUT"],
            "--n-subbufs",
            &["0", "-1"],
        ),
        (&["stat", "chan"], "--watch", &["0", "-1", "nan", "inf"]),
    ];
    // Sizes good alone but not together, and what the error names.
    let combos: &[(&[&str], &str)] = &[
        (
            &["demo", "--subbuf-size", "1G", "--n-subbufs", "1024"],
            "--subbuf-size",
        ),
        (
            &["bench", "--subbuf-size", "1G", "--n-subbufs", "128"],
            "--subbuf-size",
        ),
        (
            &["blktrace", "/dev/null", "-o", "OUT", "-b", "1G", "-n", "8"],
            "-n 8",
        ),
    ];
    let mut cases: Vec<(Vec<String>, &str)> = Vec::new();
    for (cmd, flag, bad) in table {
        for v in *bad {
            let mut c: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
            c.push(format!("{flag}={v}"));
            cases.push((c, flag));
        }
    }
    for (c, names) in combos {
        cases.push((c.iter().map(|s| s.to_string()).collect(), names));
    }
    for (case, names) in cases {
        let root = tempfile::tempdir().unwrap();
        let relay = root.path().join("relay");
        let out_dir = root.path().join("out");
        let args: Vec<String> = case
            .iter()
            .map(|a| {
                if a == "OUT" {
                    out_dir.display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        let out = relayfs(&relay)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = stderr(&out);
        let code = out.status.code();
        assert!(
            matches!(code, Some(1) | Some(2)),
            "{case:?}: refused with a usage error, got {:?}: {err}",
            out.status
        );
        assert!(!err.contains("panicked"), "{case:?}: {err}");
        assert!(
            err.contains("error") && err.contains(names),
            "{case:?}: says what is wrong, naming {names}: {err}"
        );
        let made = anything_under(root.path());
        assert!(made.is_empty(), "{case:?}: started something: {made:?}");
    }
}
