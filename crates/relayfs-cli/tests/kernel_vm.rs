//! Kernel relay channels on a real Linux kernel.
//!
//! Boots Debian's current `linux-image-*-amd64` (fetched with `apt-get
//! download`, unpacked, not installed) under `qemu-system-x86_64` with
//! software emulation, with an initramfs built here: `busybox-static`, the
//! kernel's `brd` RAM-disk module, a statically linked `relayfs` and the
//! `kernel_reader` example, and Debian's `blktrace` and `blkparse` with the
//! libraries they link. The guest script runs the scenarios; this side
//! checks what the guest printed.
//!
//! Needs qemu-system-x86, busybox-static, cpio, blktrace and a reachable
//! Debian mirror (`.ci/run` installs them). Where they are missing the test
//! says so and passes, except under `CI=true`, where it fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::which;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Debian's current kernel, unpacked under `cache`: (vmlinuz, brd.ko).
fn kernel(cache: &Path) -> (PathBuf, PathBuf) {
    let deps = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]));
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .expect("apt-cache names no linux-image package (run apt-get update)")
        .to_string();
    let root = cache.join(&pkg);
    let boot = root.join("x/boot");
    if !boot.is_dir() {
        std::fs::create_dir_all(&root).unwrap();
        run(Command::new("apt-get")
            .args(["download", &pkg])
            .current_dir(&root));
        let deb = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("apt-get download left no .deb");
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(root.join("x")));
        let _ = std::fs::remove_file(deb);
    }
    let find = |dir: &Path, pred: &dyn Fn(&str) -> bool| -> PathBuf {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if pred(&p.file_name().unwrap().to_string_lossy()) {
                    return p;
                }
            }
        }
        panic!("not found in {}", dir.display());
    };
    let vmlinuz = find(&boot, &|n| n.starts_with("vmlinuz-"));
    let brd = find(&root.join("x/lib/modules"), &|n| n == "brd.ko");
    (vmlinuz, brd)
}

/// Statically linked `relayfs`, `kernel_reader` and `blktrace_check`, built
/// for the guest.
fn static_binaries(target_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let triple = "x86_64-unknown-linux-gnu";
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "relayfs-cli",
            "--bin",
            "relayfs",
            "-p",
            "relayfs",
            "--example",
            "kernel_reader",
            "--example",
            "blktrace_check",
            "--target",
            triple,
            "--target-dir",
        ])
        .arg(target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        )
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cannot run cargo");
    assert!(
        out.status.success(),
        "static build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rel = target_dir.join(triple).join("release");
    (
        rel.join("relayfs"),
        rel.join("examples/kernel_reader"),
        rel.join("examples/blktrace_check"),
    )
}

/// Copies a dynamically linked program and the libraries `ldd` names.
fn copy_with_libs(prog: &Path, root: &Path) {
    let dest = root.join("bin").join(prog.file_name().unwrap());
    std::fs::copy(prog, dest).unwrap();
    let ldd = run(Command::new("ldd").arg(prog));
    for l in ldd.lines() {
        let lib = match l.split("=>").nth(1) {
            Some(r) => r.split_whitespace().next().unwrap_or(""),
            None => l.split_whitespace().next().unwrap_or(""),
        };
        if lib.starts_with('/') {
            let to = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(lib, &to).unwrap();
        }
    }
}

/// What the guest runs. Every result is printed between `@@ name` and
/// `@@ end` lines; `@@ rc N` gives a command's exit status.
const GUEST_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp; mkdir -p /out
insmod /brd.ko rd_nr=1 rd_size=65536
T=/sys/kernel/debug/block/ram0
sect() { echo "@@ $1"; }
rc() { echo "@@ rc $1"; echo "@@ end"; }
# Every blktrace output file: whole events from end to end, per-CPU
# sequence numbers 1..N without a gap or a repeat.
check() { sect "check-$1"; blktrace_check $2/ram0.blktrace.* 2>&1; rc $?; }

sect no-debugfs; relayfs blktrace /dev/ram0 -o /tmp/x -w 1 2>&1; rc $?
mount -t debugfs debugfs /sys/kernel/debug
sect no-device; relayfs blktrace /dev/nonexistent -o /tmp/x -w 1 2>&1; rc $?
sect not-root; su -s /bin/sh -c 'relayfs blktrace /dev/ram0 -o /tmp/x -w 1' nobody 2>&1; rc $?

# The reader API straight on the blktrace channel: tracing started and
# left running by --start, small sub-buffers so that poll wakes for
# complete ones, 1024 direct 4 KiB writes while the reader runs.
sect start; relayfs blktrace --start /dev/ram0 -b 16K -n 8 2>&1; rc $?
sect busy; relayfs blktrace /dev/ram0 -o /tmp/x -w 1 2>&1; rc $?
kernel_reader 8 $T/trace0 $T/trace1 > /tmp/reader.txt 2>&1 &
R=$!
sleep 2
dd if=/dev/zero of=/dev/ram0 bs=4k count=1024 oflag=direct 2>/dev/null
wait $R
sect reader; cat /tmp/reader.txt; rc $?
sect kill; relayfs blktrace --kill /dev/ram0 2>&1; rc $?

# relayfs record on the kernel channel directory, rotating its output.
relayfs blktrace --start /dev/ram0 -b 16K -n 8 >/dev/null
relayfs record $T --base trace -o /out/rec --max-size 16K --json -w 8 > /tmp/rec.json 2>/tmp/rec.err &
R=$!
sleep 2
dd if=/dev/zero of=/dev/ram0 bs=4k count=512 seek=4096 oflag=direct 2>/dev/null
wait $R
sect record; cat /tmp/rec.json /tmp/rec.err; rc $?
relayfs blktrace --kill /dev/ram0 2>/dev/null
mkdir -p /out/recb
for c in 0 1; do
  for i in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31; do
    [ -f /out/rec/trace$c.out.$i ] && cat /out/rec/trace$c.out.$i >> /out/recb/ram0.blktrace.$c
  done
done
sect record-files; ls /out/rec | grep -c '^trace'; rc $?
sect record-parse; blkparse -q -i ram0 -D /out/recb -f "EV %a %d %S %n\n" 2>&1; rc $?
check record /out/recb

# relayfs blktrace stopped with Ctrl-C (SIGINT) after known I/O.
relayfs blktrace /dev/ram0 -o /out/bt --json > /tmp/bt.json 2>/tmp/bt.err &
R=$!
sleep 2
dd if=/dev/zero of=/dev/ram0 bs=4k count=256 oflag=direct 2>/dev/null
dd if=/dev/ram0 of=/dev/null bs=4k count=64 skip=1024 iflag=direct 2>/dev/null
sleep 1
kill -INT $R
wait $R
sect blktrace; cat /tmp/bt.json /tmp/bt.err; rc $?
sect torn-down; ls $T 2>&1; rc $?
sect files; ls /out/bt; rc $?
sect parse; blkparse -q -i ram0 -D /out/bt -f "EV %a %d %S %n\n" 2>&1; rc $?
check blktrace /out/bt

# A mixed direct-I/O load: reads and writes of 4 KiB to 512 KiB pinned to
# each CPU, and 3000 small writes, stopped by SIGINT while it runs (the
# kernel's flush at BLKTRACESTOP then meets busy readers), twelve times.
mixed() {
  for c in 0 1; do
    ( for bs in 4k 32k 128k 512k; do
        taskset -c $c dd if=/dev/zero of=/dev/ram0 bs=$bs count=8 seek=$((c*16)) oflag=direct 2>/dev/null
        taskset -c $c dd if=/dev/ram0 of=/dev/null bs=$bs count=8 skip=$((c*16)) iflag=direct 2>/dev/null
      done ) &
  done
  dd if=/dev/zero of=/dev/ram0 bs=512 count=3000 seek=100000 oflag=direct 2>/dev/null &
}
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do
  relayfs blktrace /dev/ram0 -o /out/mixed$i --json > /tmp/mixed.json 2>/tmp/mixed.err &
  R=$!
  sleep 1; mixed; sleep 1
  kill -INT $R
  wait $R
  X=$?
  wait
  sect mixed-$i; cat /tmp/mixed.json /tmp/mixed.err; rc $X
  check mixed-$i /out/mixed$i
done

# The same heavier load under blktrace's own recorder and under relayfs.
load() { dd if=/dev/zero of=/dev/ram0 bs=4k count=16384 oflag=direct 2>/dev/null; }
mkdir -p /out/cmp-blktrace /out/cmp-relayfs
( time blktrace -d /dev/ram0 -D /out/cmp-blktrace ) > /tmp/c1.out 2>&1 &
sleep 2; load; sleep 1; killall -INT blktrace; wait
sect cmp-blktrace; cat /tmp/c1.out; rc $?
( time relayfs blktrace /dev/ram0 -o /out/cmp-relayfs ) > /tmp/c2.out 2>&1 &
sleep 2; load; sleep 1; killall -INT relayfs; wait
sect cmp-relayfs; cat /tmp/c2.out; rc $?
check cmp-relayfs /out/cmp-relayfs
# And with small buffers (16 KiB x 2 per CPU), where keeping up matters.
( time blktrace -d /dev/ram0 -D /out/cmp-blktrace -b 16 -n 2 ) > /tmp/c3.out 2>&1 &
sleep 2; load; sleep 1; killall -INT blktrace; wait
sect cmp-blktrace-small; cat /tmp/c3.out; rc $?
( time relayfs blktrace /dev/ram0 -o /out/cmp-relayfs -b 16K -n 2 ) > /tmp/c4.out 2>&1 &
sleep 2; load; sleep 1; killall -INT relayfs; wait
sect cmp-relayfs-small; cat /tmp/c4.out; rc $?
check cmp-relayfs-small /out/cmp-relayfs

# Losses: tiny buffers and a recorder stopped (SIGSTOP) during the load, so
# the kernel must drop; the count is reported with advice.
relayfs blktrace /dev/ram0 -o /out/drop -b 4K -n 2 > /tmp/drop.out 2>&1 &
R=$!
sleep 2; kill -STOP $R
dd if=/dev/zero of=/dev/ram0 bs=4k count=2048 oflag=direct 2>/dev/null
kill -CONT $R; sleep 1; kill -INT $R; wait $R
sect drops; cat /tmp/drop.out; rc $?
check drops /out/drop
sect drops-parse; blkparse -q -i ram0 -D /out/drop -f "EV %a %d %S %n\n" 2>&1 | grep -c '^EV'; rc 0

# Kernel lockdown, raised at run time: relay files in debugfs can't be
# opened any more, and the error says why.
mount -t securityfs securityfs /sys/kernel/security
echo integrity > /sys/kernel/security/lockdown
sect lockdown; relayfs blktrace /dev/ram0 -o /tmp/x -w 1 2>&1; rc $?
sect lockdown-dmesg; dmesg | grep -i 'lockdown' | tail -3; rc 0
sect after-lockdown; relayfs blktrace --kill /dev/ram0 2>&1; rc $?
echo "@@ guest-done"
poweroff -f
"#;

fn build_initramfs(
    work: &Path,
    relayfs: &Path,
    reader: &Path,
    checker: &Path,
    brd: &Path,
) -> PathBuf {
    let root = work.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "tmp", "out", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    std::fs::copy(which("busybox").unwrap(), root.join("bin/busybox")).unwrap();
    std::fs::copy(relayfs, root.join("bin/relayfs")).unwrap();
    std::fs::copy(reader, root.join("bin/kernel_reader")).unwrap();
    std::fs::copy(checker, root.join("bin/blktrace_check")).unwrap();
    std::fs::copy(brd, root.join("brd.ko")).unwrap();
    copy_with_libs(&which("blkparse").unwrap(), &root);
    copy_with_libs(&which("blktrace").unwrap(), &root);
    let init = root.join("init");
    std::fs::write(&init, GUEST_SCRIPT).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = work.join("initramfs.cpio");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find . | cpio -o -H newc --quiet > '{}'",
            img.display()
        ))
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(st.success(), "cpio failed");
    img
}

fn boot(vmlinuz: &Path, initrd: &Path) -> String {
    let mut child = Command::new(which("qemu-system-x86_64").unwrap())
        .args(["-accel", "tcg", "-m", "1024", "-smp", "2"])
        .args([
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet loglevel=3 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start qemu");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut v).unwrap();
        v
    });
    let started = Instant::now();
    let limit = Duration::from_secs(600);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = String::from_utf8_lossy(&reader.join().unwrap()).replace('\r', "");
    eprintln!(
        "guest ran {:.1} s under TCG",
        started.elapsed().as_secs_f64()
    );
    out
}

/// The guest's output, cut into sections: name -> (text, exit status).
fn sections(out: &str) -> BTreeMap<String, (String, i32)> {
    let mut map = BTreeMap::new();
    let mut cur: Option<(String, String)> = None;
    for line in out.lines() {
        // The console may put escape sequences before the first marker.
        if let Some(rest) = line.find("@@ ").map(|i| &line[i + 3..]) {
            if let Some(code) = rest.strip_prefix("rc ") {
                if let Some((name, text)) = cur.take() {
                    map.insert(name, (text, code.trim().parse().unwrap_or(-1)));
                }
            } else if rest != "end" {
                cur = Some((rest.trim().to_string(), String::new()));
            }
        } else if let Some((_, text)) = cur.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    map
}

fn json_in(text: &str) -> serde_json::Value {
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in:\n{text}"));
    serde_json::from_str(line).unwrap()
}

/// `EV action rwbs sector blocks` lines from blkparse: how many of each
/// (action, rwbs), and the sectors of each.
fn events(text: &str) -> BTreeMap<(String, String), Vec<u64>> {
    let mut m: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 5 && f[0] == "EV" {
            m.entry((f[1].to_string(), f[2].to_string()))
                .or_default()
                .push(f[3].parse().unwrap());
        }
    }
    m
}

/// The "Total: N events (dropped D)" line both recorders print.
fn total_line(text: &str) -> (u64, u64) {
    let l = text
        .lines()
        .find(|l| l.trim_start().starts_with("Total:"))
        .unwrap_or_else(|| panic!("no Total line in:\n{text}"));
    let nums: Vec<u64> = l
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

/// busybox `time`: user + sys seconds.
fn cpu_time(text: &str) -> f64 {
    let mut t = 0.0;
    for l in text.lines() {
        let l = l.trim();
        if l.starts_with("user") || l.starts_with("sys") {
            // "user\t0m 0.12s"
            let v = l.split_whitespace().skip(1).collect::<Vec<_>>();
            let mins: f64 = v[0].trim_end_matches('m').parse().unwrap_or(0.0);
            let secs: f64 = v
                .get(1)
                .map_or(0.0, |s| s.trim_end_matches('s').parse().unwrap_or(0.0));
            t += mins * 60.0 + secs;
        }
    }
    t
}

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[test]
fn kernel_relay_channels_on_a_real_kernel() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let missing: Vec<&str> = [
        "qemu-system-x86_64",
        "busybox",
        "cpio",
        "blkparse",
        "blktrace",
        "apt-get",
        "dpkg-deb",
        "ldd",
    ]
    .into_iter()
    .filter(|t| which(t).is_none())
    .collect();
    if !missing.is_empty() {
        let msg = format!(
            "kernel VM test not run: missing {} (apt-get install qemu-system-x86 busybox-static cpio blktrace)",
            missing.join(", ")
        );
        assert!(!ci, "{msg}");
        eprintln!("{msg}");
        return;
    }
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-vm");
    std::fs::create_dir_all(&work).unwrap();
    let (vmlinuz, brd) = kernel(&work.join("kernel"));
    let (relayfs, reader, checker) = static_binaries(&work.join("static"));
    let initrd = build_initramfs(&work, &relayfs, &reader, &checker, &brd);
    let out = boot(&vmlinuz, &initrd);
    std::fs::write(work.join("console.txt"), &out).unwrap();
    let s = sections(&out);
    let sec = |name: &str| -> &(String, i32) {
        s.get(name).unwrap_or_else(|| {
            panic!(
                "the guest printed no section {name:?}; console in {}:\n{out}",
                work.join("console.txt").display()
            )
        })
    };
    assert!(
        out.contains("@@ guest-done"),
        "guest did not finish:\n{out}"
    );

    // Clear errors for what users hit.
    let (t, rc) = sec("no-debugfs");
    assert!(
        *rc == 1 && t.contains("debugfs is not mounted") && t.contains("mount -t debugfs"),
        "{t}"
    );
    let (t, rc) = sec("no-device");
    assert!(*rc == 1 && t.contains("no such device"), "{t}");
    let (t, rc) = sec("not-root");
    assert!(*rc == 1 && t.contains("needs root"), "{t}");
    let (t, rc) = sec("start");
    assert!(
        *rc == 0 && t.contains("/sys/kernel/debug/block/ram0"),
        "{t}"
    );
    let (t, rc) = sec("busy");
    assert!(*rc == 1 && t.contains("already running"), "{t}");

    // The reader API on the blktrace channel: exactly the writes done.
    let (t, rc) = sec("reader");
    assert_eq!(*rc, 0, "{t}");
    let lines: Vec<&str> = t.lines().filter(|l| l.starts_with("file=")).collect();
    assert_eq!(lines.len(), 2, "{t}");
    assert!(lines.iter().all(|l| l.contains("kind=kernel")), "{t}");
    let sum = |k: &str| lines.iter().map(|l| field(l, k)).sum::<u64>();
    assert_eq!(sum("queued_writes"), 1024, "{t}");
    assert_eq!(sum("queued_write_bytes"), 1024 * 4096, "{t}");
    assert_eq!(sum("bad_bytes"), 0, "{t}");
    assert!(
        sum("readable") > 0,
        "poll never reported a complete sub-buffer: {t}"
    );
    assert_eq!(sec("kill").1, 0, "{}", sec("kill").0);

    // relayfs record on the kernel channel directory, with rotation.
    let (t, rc) = sec("record");
    assert_eq!(*rc, 0, "{t}");
    let j = json_in(t);
    assert_eq!(j["kind"], "kernel", "{t}");
    assert_eq!(j["end"], "stopped", "{t}");
    assert_eq!(j["dropped"], 0, "{t}");
    assert_eq!(j["mmap"], "no (No such device (os error 19))", "{t}");
    assert!(
        j["buffers"][0]["sendfile"]
            .as_str()
            .unwrap()
            .starts_with("no (Invalid argument"),
        "{t}"
    );
    let files: u64 = sec("record-files").0.trim().parse().unwrap();
    assert!(files > 2, "rotation made {files} files");
    let ev = events(&sec("record-parse").0);
    let qw = &ev[&("Q".to_string(), "WS".to_string())];
    assert_eq!(qw.len(), 512, "{ev:?}");
    assert_eq!(*qw, (0..512).map(|i| 32768 + 8 * i).collect::<Vec<u64>>());

    // relayfs blktrace stopped by SIGINT: every I/O, nothing dropped, torn
    // down.
    let (t, rc) = sec("blktrace");
    assert_eq!(*rc, 0, "{t}");
    let j = json_in(t);
    assert_eq!(j["dropped"], 0, "{t}");
    assert_eq!(j["end"], "interrupted", "{t}");
    assert_eq!(j["unparsed_bytes"], 0, "{t}");
    let (t, _) = sec("torn-down");
    assert!(
        !t.contains("trace0"),
        "tracing left set up after SIGINT: {t}"
    );
    let (t, _) = sec("files");
    assert!(
        t.contains("ram0.blktrace.0") && t.contains("ram0.blktrace.1"),
        "{t}"
    );
    let ev = events(&sec("parse").0);
    let sectors = |a: &str, rwbs: &str| -> Vec<u64> {
        let mut v = ev
            .get(&(a.to_string(), rwbs.to_string()))
            .cloned()
            .unwrap_or_default();
        v.sort_unstable();
        v
    };
    let writes: Vec<u64> = (0..256).map(|i| 8 * i).collect();
    let reads: Vec<u64> = (0..64).map(|i| 8192 + 8 * i).collect();
    assert_eq!(sectors("Q", "WS"), writes, "{ev:?}");
    assert_eq!(sectors("C", "WS"), writes, "{ev:?}");
    assert_eq!(sectors("Q", "RS"), reads, "{ev:?}");
    assert_eq!(sectors("C", "RS"), reads, "{ev:?}");
    let total: usize = ev.values().map(Vec::len).sum();
    assert!(
        j["events"].as_u64().unwrap() >= total as u64,
        "relayfs counted {} events, blkparse {total}",
        j["events"]
    );

    // Every output file of every recording parses from end to end, with
    // each CPU's events numbered 1..N: nothing torn, lost, repeated or
    // appended.
    let mut checks: Vec<String> = [
        "record",
        "blktrace",
        "cmp-relayfs",
        "cmp-relayfs-small",
        "drops",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    checks.extend((1..=12).map(|i| format!("mixed-{i}")));
    for name in &checks {
        let (t, rc) = sec(&format!("check-{name}"));
        let files: Vec<&str> = t.lines().filter(|l| l.starts_with("file=")).collect();
        assert_eq!(files.len(), 2, "{name}: {t}");
        for l in &files {
            assert_eq!(field(l, "unparsed"), 0, "{name}: {l}");
            assert_eq!(field(l, "gaps"), 0, "{name}: {l}");
            assert_eq!(field(l, "repeats"), 0, "{name}: {l}");
            assert!(
                field(l, "events") == 0 || field(l, "first") == 1,
                "{name}: {l}"
            );
        }
        assert!(
            files.iter().map(|l| field(l, "events")).sum::<u64>() > 0,
            "{name}: no events: {t}"
        );
        assert_eq!(*rc, 0, "{name}: {t}");
    }
    // The mixed load stopped mid-run: a clean, complete recording each time.
    for i in 1..=12 {
        let (t, rc) = sec(&format!("mixed-{i}"));
        assert_eq!(*rc, 0, "mixed-{i}: {t}");
        let j = json_in(t);
        assert_eq!(j["end"], "interrupted", "mixed-{i}: {t}");
        assert_eq!(j["unparsed_bytes"], 0, "mixed-{i}: {t}");
        assert_eq!(j["dropped"], 0, "mixed-{i}: {t}");
    }

    // Side by side with blktrace's own recorder.
    let mut report =
        String::from("same guest, 16384 direct 4 KiB writes to /dev/ram0 under each recorder:\n");
    for (label, suffix) in [("512 KiB x 4 (default)", ""), ("16 KiB x 2", "-small")] {
        let (bt, _) = sec(&format!("cmp-blktrace{suffix}"));
        let (rf, _) = sec(&format!("cmp-relayfs{suffix}"));
        let (bt_ev, bt_drop) = total_line(bt);
        let (rf_ev, rf_drop) = total_line(rf);
        // Whatever each lost, it counted: recorded + dropped covers the I/O.
        assert!(rf_ev + rf_drop >= 2 * 16384, "{rf}");
        if suffix.is_empty() {
            assert_eq!(rf_drop, 0, "{rf}");
        }
        report += &format!(
            "  buffers {label}:\n    blktrace: {bt_ev} events, {bt_drop} dropped, {:.2} CPU s\n    relayfs:  {rf_ev} events, {rf_drop} dropped, {:.2} CPU s\n",
            cpu_time(bt),
            cpu_time(rf)
        );
    }
    eprint!("{report}");
    std::fs::write(work.join("comparison.txt"), &report).unwrap();

    // Losses are counted and reported, never silent: what was recorded
    // plus what the kernel dropped covers the I/O done.
    let (t, rc) = sec("drops");
    assert_eq!(*rc, 0, "{t}");
    let (recorded, dropped) = total_line(t);
    assert!(
        dropped > 0,
        "a stopped recorder with 2 x 4 KiB buffers lost nothing? {t}"
    );
    assert!(
        t.contains("dropped events") && t.contains("--subbuf-size"),
        "{t}"
    );
    assert!(recorded + dropped >= 2 * 2048, "{t}");
    let parsed: u64 = sec("drops-parse").0.trim().parse().unwrap();
    assert!(
        parsed > 0 && parsed <= recorded,
        "blkparse read {parsed}, relayfs recorded {recorded}"
    );

    // Lockdown.
    let (t, rc) = sec("lockdown");
    assert_eq!(*rc, 1, "{t}");
    assert!(t.contains("lockdown (integrity)"), "{t}");
    let (t, _) = sec("lockdown-dmesg");
    assert!(t.contains("debugfs access is restricted"), "{t}");
    // The failed run tore its tracing down: --kill finds nothing to stop.
    let (t, _) = sec("after-lockdown");
    assert!(t.contains("nothing was running"), "{t}");
}
