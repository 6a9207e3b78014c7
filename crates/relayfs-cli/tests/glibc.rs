//! The `relayfs` binary runs on glibc 2.31 (Debian 11, Ubuntu 20.04).
//!
//! What a binary needs from glibc is fixed when it is linked: each symbol it
//! imports carries a version (`GLIBC_2.x`), and the dynamic loader refuses
//! to start it if the system's glibc lacks one. So:
//!
//! - the cheap test checks the binary built here imports nothing newer than
//!   what the C start files of this system's glibc already need (the code
//!   itself asks for no newer symbol, such as glibc 2.35's `__rseq_offset`);
//! - the Debian 11 test links the binary against Debian 11's glibc (a root
//!   made by `debootstrap --variant=minbase --include=libc6-dev bullseye`,
//!   kept under the target directory), checks it needs at most
//!   `GLIBC_2.31`, and runs `relayfs demo` in that root with `chroot`.
//!
//! Tools or network missing: the tests say "skipped: ..." and pass, except
//! under `CI=true`, where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::which;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (loudly) outside CI, fails in CI.
fn skip(why: &str) {
    assert!(!ci(), "{why}");
    eprintln!("skipped: {why}");
}

/// `GLIBC_2.34` -> (2, 34); `GLIBC_2.2.5` -> (2, 2, 5) as (2, 2).
fn version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.strip_prefix("GLIBC_")?.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The undefined dynamic symbols of `bin` with the glibc version each
/// needs, from `objdump -T`.
fn glibc_imports(bin: &Path) -> Vec<(String, (u32, u32))> {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(bin)
        .output()
        .expect("cannot run objdump");
    assert!(
        out.status.success(),
        "objdump -T {} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    for l in text.lines().filter(|l| l.contains("*UND*")) {
        // "0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.34) pthread_create"
        let Some(open) = l.find('(') else { continue };
        let Some(close) = l[open..].find(')') else {
            continue;
        };
        let ver = &l[open + 1..open + close];
        let name = l[open + close + 1..].trim().to_string();
        if let Some(ver) = version(ver) {
            v.push((name, ver));
        }
    }
    assert!(
        !v.is_empty(),
        "objdump found no glibc imports in {}",
        bin.display()
    );
    v
}

#[test]
fn binary_needs_no_newer_glibc_than_its_start_files() {
    if which("objdump").is_none() {
        return skip("objdump not found (apt-get install binutils)");
    }
    let imports = glibc_imports(Path::new(env!("CARGO_BIN_EXE_relayfs")));
    let rseq: Vec<_> = imports
        .iter()
        .filter(|(n, _)| n.starts_with("__rseq_"))
        .collect();
    assert!(
        rseq.is_empty(),
        "the binary links glibc 2.35's rseq symbols: {rseq:?}"
    );
    // Every program linked against this glibc imports __libc_start_main
    // (from the start files) at this glibc's version of it: nothing the
    // code chose may need more.
    let start = imports
        .iter()
        .find(|(n, _)| n == "__libc_start_main")
        .map(|i| i.1)
        .expect("no __libc_start_main import");
    let over: Vec<_> = imports.iter().filter(|i| i.1 > start).collect();
    assert!(
        over.is_empty(),
        "imports newer than __libc_start_main's GLIBC_{}.{}: {over:?}",
        start.0,
        start.1
    );
}

/// Makes the absolute symbolic links among the root's libraries relative,
/// so that the linker, looking from outside the root, finds the root's
/// libraries and not this system's (`libpthread.so ->
/// /lib/x86_64-linux-gnu/libpthread.so.0`); inside the root they mean the
/// same.
fn relative_links(root: &Path) {
    for dir in ["usr/lib/x86_64-linux-gnu", "lib64"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let up = "../".repeat(dir.split('/').count());
        for e in entries {
            let p = e.unwrap().path();
            let Ok(target) = std::fs::read_link(&p) else {
                continue;
            };
            if let Ok(rest) = target.strip_prefix("/") {
                std::fs::remove_file(&p).unwrap();
                std::os::unix::fs::symlink(Path::new(&up).join(rest), &p).unwrap();
            }
        }
    }
}

/// A Debian 11 root with libc6-dev, made once under the target directory.
fn bullseye_root() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("glibc");
    let root = dir.join("bullseye");
    if root
        .join("usr/lib/x86_64-linux-gnu/libc_nonshared.a")
        .is_file()
    {
        relative_links(&root);
        return Some(root);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("making a Debian 11 root with debootstrap and chroot into it need root");
        return None;
    }
    if which("debootstrap").is_none() {
        skip("debootstrap not found (apt-get install debootstrap)");
        return None;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let partial = dir.join("bullseye.partial");
    let _ = std::fs::remove_dir_all(&partial);
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "--include=libc6-dev", "bullseye"])
        .arg(&partial)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("cannot run debootstrap");
    if !out.status.success() {
        skip(&format!(
            "debootstrap of Debian 11 failed (no network?): {}{}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&out.stderr)
        ));
        return None;
    }
    std::fs::rename(&partial, &root).unwrap();
    relative_links(&root);
    Some(root)
}

/// `relayfs` built in release mode and linked against the glibc of `root`
/// (its C start files, `libc.so`, `libc_nonshared.a`), in a target
/// directory of its own. `--sysroot` alone is not enough: the compiler
/// driver searches its own install's `../../../x86_64-linux-gnu` (this
/// system's libraries) first, so the root's start files (`-B`) and
/// libraries (`-L`) are named before it.
fn build_against(root: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("glibc/build");
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "relayfs-cli",
            "--bin",
            "relayfs",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(
            "RUSTFLAGS",
            format!(
                "-C link-arg=--sysroot={r} -C link-arg=-B{r}/usr/lib/x86_64-linux-gnu -C link-arg=-L{r}/usr/lib/x86_64-linux-gnu",
                r = root.display()
            ),
        )
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cannot run cargo");
    assert!(
        out.status.success(),
        "build against Debian 11's glibc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join("release/relayfs")
}

#[test]
fn runs_on_debian_11_glibc_2_31() {
    for tool in ["objdump", "chroot", "unshare"] {
        if which(tool).is_none() {
            return skip(&format!("{tool} not found"));
        }
    }
    let Some(root) = bullseye_root() else { return };
    let bin = build_against(&root);
    let imports = glibc_imports(&bin);
    let over: Vec<_> = imports.iter().filter(|i| i.1 > (2, 31)).collect();
    assert!(
        over.is_empty(),
        "linked against glibc 2.31, the binary still needs newer: {over:?}"
    );

    std::fs::copy(&bin, root.join("relayfs")).unwrap();
    // A mount namespace of its own: /proc and /sys in the root go away
    // with it.
    let script = format!(
        "set -e; mount -t proc proc {r}/proc; mount -t sysfs sysfs {r}/sys; \
         rm -rf {r}/tmp/relayfs; mkdir -p {r}/tmp/relayfs; \
         RELAYFS_DIR=/tmp/relayfs chroot {r} /relayfs demo --count 1000 --threads 2 --json",
        r = root.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("cannot run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "relayfs demo in the Debian 11 root failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON from relayfs demo:\n{stdout}"));
    let j: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(j["verified"], true, "{j}");
    assert_eq!(j["written"], 2000, "{j}");
    assert_eq!(
        j["delivered"].as_u64().unwrap() + j["dropped"].as_u64().unwrap(),
        2000,
        "{j}"
    );
    // glibc 2.31 registers no rseq area: the CPU comes from sched_getcpu.
    assert_eq!(j["cpu_id"], "sched_getcpu", "{j}");
}
