//! Reading through `relayfs mount` against `relayfs record -o /dev/null`,
//! measured in the same run on the same kind of channel: one global buffer
//! of 1 MiB sub-buffers, filled while the reader is attached but stopped,
//! then drained by the reader, timed from its `SIGCONT` to its exit. Into
//! `/dev/null` (where `relayfs record` writes from the mapping and nothing
//! is copied at all) and into a tmpfs file (one copy each way).
//!
//! Run with `scripts/mount_bench.sh` (it builds the release binaries
//! first). Prints one line per run and the medians; `--json` prints one
//! object.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relayfs::{Channel, WriteError};
use rustix::process::{kill_process, Pid, Signal};

const SUBBUF: u64 = 1 << 20;

struct Opts {
    n_subbufs: u64,
    record: usize,
    rounds: usize,
    json: bool,
    /// Another `relayfs` build to mount beside this one (an A/B of the
    /// mount itself, in the same run).
    baseline: Option<PathBuf>,
    /// The `relayfs` build measured (default: the one beside this example).
    bin: Option<PathBuf>,
    /// Only the recorder into `/dev/null` and the two mounts' `dd bs=1M`:
    /// shorter rounds, so more of them, the two mounts next to each other.
    ab: bool,
}

fn parse() -> Opts {
    let mut o = Opts {
        n_subbufs: 1024,
        record: 4096,
        rounds: 5,
        json: false,
        baseline: None,
        bin: None,
        ab: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} needs a number"))
        };
        match a.as_str() {
            "--n-subbufs" => o.n_subbufs = num("--n-subbufs"),
            "--record" => o.record = num("--record") as usize,
            "--rounds" => o.rounds = num("--rounds") as usize,
            "--json" => o.json = true,
            "--ab" => o.ab = true,
            "--bin" => {
                let p = args.next().expect("--bin needs a path");
                o.bin = Some(PathBuf::from(p));
            }
            "--baseline-bin" => {
                let p = args.next().expect("--baseline-bin needs a path");
                o.baseline = Some(PathBuf::from(p));
            }
            _ => panic!(
                "usage: mount_bench [--n-subbufs N] [--record BYTES] [--rounds N] [--json] \
                 [--bin RELAYFS] [--baseline-bin RELAYFS] [--ab]"
            ),
        }
    }
    o
}

/// The `relayfs` binary built beside this example.
fn relayfs_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("relayfs");
    assert!(p.is_file(), "no {} (build the binaries first)", p.display());
    p
}

struct Mounted {
    child: Child,
    mp: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
        let _ = self.child.wait();
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mp)
            .stderr(Stdio::null())
            .status();
    }
}

fn mount(bin: &Path, root: &Path, mp: &Path) -> Mounted {
    let child = Command::new(bin)
        .env("RELAYFS_DIR", root)
        .arg("mount")
        .arg("--follow")
        .arg(mp)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&format!(" {} ", mp.display()))
    {
        assert!(t.elapsed() < Duration::from_secs(30), "no mount");
        std::thread::sleep(Duration::from_millis(10));
    }
    Mounted {
        child,
        mp: mp.to_path_buf(),
    }
}

/// One drain: the reader `cmd` is started, attached, stopped; the buffer
/// filled and the channel closed; the reader continued and timed to its
/// exit. Returns (bytes, seconds).
fn drain(root: &Path, o: &Opts, name: &str, cmd: impl FnOnce(&Channel) -> Command) -> (u64, f64) {
    let chan = Channel::builder(name)
        .relay_dir(root)
        .global(true)
        .subbuf_size(SUBBUF)
        .n_subbufs(o.n_subbufs)
        .open()
        .unwrap();
    let c = cmd(&chan)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        chan.wait_for_readers(Duration::from_secs(30)),
        "the reader did not attach"
    );
    let pid = Pid::from_child(&c);
    kill_process(pid, Signal::STOP).unwrap();
    let rec = vec![0x5au8; o.record];
    loop {
        match chan.write(&rec) {
            Ok(()) => {}
            Err(WriteError::Full) => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    let stats = chan.close().unwrap();
    let bytes = stats.bytes_written + (stats.records_pending * o.record as u64).min(SUBBUF);
    let t = Instant::now();
    kill_process(pid, Signal::CONT).unwrap();
    let out = c.wait_with_output().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (bytes, secs)
}

/// CPU time a process has run, in seconds: the sum of its threads'
/// (`/proc/PID/task/*/schedstat`, nanoseconds on a CPU). Less disturbed by
/// other load on the machine than the wall-clock rate.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut ns = 0u64;
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// Context switches of a process so far, voluntary and not, summed over
/// its threads (`/proc/PID/task/*/status`).
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut n = 0;
    for t in tasks.flatten() {
        let Ok(s) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        for l in s.lines() {
            if l.starts_with("voluntary_ctxt_switches:")
                || l.starts_with("nonvoluntary_ctxt_switches:")
            {
                n += l
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    n
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let o = parse();
    let base = tempfile::Builder::new()
        .prefix("relayfs-mount-bench-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let root = base.path().join("relay");
    let mp = base.path().join("mnt");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&mp).unwrap();
    let bin = o.bin.clone().unwrap_or_else(relayfs_bin);
    let _m = mount(&bin, &root, &mp);
    let mp0 = base.path().join("mnt0");
    std::fs::create_dir_all(&mp0).unwrap();
    let _m0 = o.baseline.as_ref().map(|b| mount(b, &root, &mp0));
    // Outputs into tmpfs (one copy, as a recording to a file has), removed
    // after each run.
    let out = base.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    type Reader<'a> = (&'a str, Box<dyn Fn(&Channel, &str) -> Command + 'a>);
    let readers: Vec<Reader<'_>> = vec![
        (
            "record -o /dev/null",
            Box::new(|_c: &Channel, name: &str| {
                let mut c = Command::new(&bin);
                c.env("RELAYFS_DIR", &root)
                    .args(["record", name, "-o", "/dev/null"]);
                c
            }),
        ),
        (
            "mount: dd bs=1M",
            Box::new(|c: &Channel, name: &str| {
                let f = c.buffer_path(0).file_name().unwrap().to_owned();
                let mut d = Command::new("dd");
                d.arg(format!("if={}", mp.join(name).join(f).display()))
                    .args(["of=/dev/null", "bs=1M", "status=none"]);
                d
            }),
        ),
        (
            "mount: dd bs=128K",
            Box::new(|c: &Channel, name: &str| {
                let f = c.buffer_path(0).file_name().unwrap().to_owned();
                let mut d = Command::new("dd");
                d.arg(format!("if={}", mp.join(name).join(f).display()))
                    .args(["of=/dev/null", "bs=128K", "status=none"]);
                d
            }),
        ),
        (
            "record -o tmpfs dir",
            Box::new(|_c: &Channel, name: &str| {
                let mut c = Command::new(&bin);
                c.env("RELAYFS_DIR", &root)
                    .args(["record", name, "-o"])
                    .arg(out.join(name));
                c
            }),
        ),
        (
            "mount: dd bs=1M tmpfs",
            Box::new(|c: &Channel, name: &str| {
                let f = c.buffer_path(0).file_name().unwrap().to_owned();
                let mut d = Command::new("dd");
                d.arg(format!("if={}", mp.join(name).join(f).display()))
                    .arg(format!("of={}", out.join(name).display()))
                    .args(["bs=1M", "status=none"]);
                d
            }),
        ),
    ];
    let mut readers = readers;
    if o.baseline.is_some() {
        readers.push((
            "baseline mount: dd bs=1M",
            Box::new(|c: &Channel, name: &str| {
                let f = c.buffer_path(0).file_name().unwrap().to_owned();
                let mut d = Command::new("dd");
                d.arg(format!("if={}", mp0.join(name).join(f).display()))
                    .args(["of=/dev/null", "bs=1M", "status=none"]);
                d
            }),
        ));
    }
    if o.ab {
        readers.retain(|(w, _)| {
            [
                "record -o /dev/null",
                "mount: dd bs=1M",
                "baseline mount: dd bs=1M",
            ]
            .contains(w)
        });
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); readers.len() + 1];
    // Per reader through a mount: the mount process's CPU seconds per GiB.
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); readers.len()];
    // And its context switches per MiB.
    let mut ctx: Vec<Vec<f64>> = vec![Vec::new(); readers.len()];
    // The ceiling of any reader that gets the bytes: one copy of as much
    // from shared memory into a process (`dd` of a tmpfs file, its pages
    // made beforehand), which `record -o /dev/null` never makes.
    let ceiling = "ceiling: dd tmpfs file";
    let file = base.path().join("ceiling");
    let file_len = o.n_subbufs * SUBBUF;
    {
        let f = std::fs::File::create(&file).unwrap();
        let mut w = std::io::BufWriter::new(f);
        let chunk = vec![0x5au8; SUBBUF as usize];
        for _ in 0..o.n_subbufs {
            std::io::Write::write_all(&mut w, &chunk).unwrap();
        }
    }
    for round in 0..o.rounds {
        let t = Instant::now();
        let st = Command::new("dd")
            .arg(format!("if={}", file.display()))
            .args(["of=/dev/null", "bs=1M", "status=none"])
            .status()
            .unwrap();
        assert!(st.success());
        let secs = t.elapsed().as_secs_f64();
        let gbps = file_len as f64 / secs / 1e9;
        if !o.json {
            println!("round {round} {ceiling:<22} {file_len} bytes in {secs:.3} s: {gbps:.2} GB/s");
        }
        rates[readers.len()].push(gbps);
        // Alternate the order, so that neither always runs first.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..readers.len()).collect()
        } else {
            (0..readers.len()).rev().collect()
        };
        for i in order {
            let name = format!("b{round}x{i}");
            let (what, mk) = &readers[i];
            // The mount this reader reads through, if any, and its CPU time.
            let via = if what.starts_with("baseline") {
                _m0.as_ref()
            } else if what.starts_with("mount") {
                Some(&_m)
            } else {
                None
            };
            let cpu0 = via.map(|m| (cpu_secs(m.child.id()), switches(m.child.id())));
            let (bytes, secs) = drain(&root, &o, &name, |c| mk(c, &name));
            if let (Some(m), Some((c0, s0))) = (via, cpu0) {
                let mib = bytes as f64 / (1u64 << 20) as f64;
                let per_gib = (cpu_secs(m.child.id()) - c0) / (mib / 1024.0);
                let sw = switches(m.child.id()).saturating_sub(s0) as f64 / mib;
                if !o.json {
                    println!(
                        "round {round} {what:<22} mount CPU {:.0} ms/GiB, {sw:.1} context switches/MiB",
                        per_gib * 1e3
                    );
                }
                cpu[i].push(per_gib);
                ctx[i].push(sw);
            }
            let gbps = bytes as f64 / secs / 1e9;
            if !o.json {
                println!("round {round} {what:<22} {bytes} bytes in {secs:.3} s: {gbps:.2} GB/s");
            }
            rates[i].push(gbps);
            let o = out.join(&name);
            let _ = std::fs::remove_dir_all(&o).or_else(|_| std::fs::remove_file(&o));
        }
    }
    let _ = std::fs::remove_file(&file);
    // This build's mount against the baseline's, round by round (the two
    // ran within seconds of each other, so the machine's load is shared).
    let base_i = readers.iter().position(|(w, _)| w.starts_with("baseline"));
    let this_i = readers
        .iter()
        .position(|(w, _)| *w == "mount: dd bs=1M")
        .unwrap();
    let pair = |v: &[Vec<f64>], inv: bool| -> Vec<f64> {
        match base_i {
            Some(b) => v[this_i]
                .iter()
                .zip(&v[b])
                .map(|(a, b)| if inv { b / a } else { a / b })
                .collect(),
            None => Vec::new(),
        }
    };
    // Rate over the baseline's, and the baseline's CPU time over this
    // one's (both above 1 when this build is faster).
    let mut paired = pair(&rates, false);
    let mut paired_cpu = pair(&cpu, true);
    let cpu_meds: Vec<Option<f64>> = cpu
        .iter_mut()
        .map(|v| (!v.is_empty()).then(|| median(v)))
        .collect();
    let ctx_meds: Vec<Option<f64>> = ctx
        .iter_mut()
        .map(|v| (!v.is_empty()).then(|| median(v)))
        .collect();
    let meds: Vec<f64> = rates.iter_mut().map(|v| median(v)).collect();
    let names: Vec<&str> = readers
        .iter()
        .map(|(w, _)| *w)
        .chain(std::iter::once(ceiling))
        .collect();
    if o.json {
        let v = serde_json::json!({
            "subbuf_size": SUBBUF,
            "n_subbufs": o.n_subbufs,
            "record": o.record,
            "rounds": o.rounds,
            "median_gb_per_s": names.iter().zip(&meds)
                .map(|(w, m)| (w.to_string(), serde_json::json!(m)))
                .collect::<serde_json::Map<_, _>>(),
            "paired_mount_over_baseline": paired.clone(),
            "paired_baseline_cpu_over_mount_cpu": paired_cpu.clone(),
            "median_mount_switches_per_mib": names.iter().zip(&ctx_meds)
                .filter_map(|(w, m)| m.map(|m| (w.to_string(), serde_json::json!(m))))
                .collect::<serde_json::Map<_, _>>(),
            "median_mount_cpu_s_per_gib": names.iter().zip(&cpu_meds)
                .filter_map(|(w, m)| m.map(|m| (w.to_string(), serde_json::json!(m))))
                .collect::<serde_json::Map<_, _>>(),
        });
        println!("{v}");
    } else {
        for (what, m) in names.iter().zip(&meds) {
            println!(
                "median {what:<22} {m:.2} GB/s ({:.2} of the recorder's)",
                m / meds[0]
            );
        }
        for ((what, m), sw) in names.iter().zip(&cpu_meds).zip(&ctx_meds) {
            if let (Some(m), Some(sw)) = (m, sw) {
                println!(
                    "median {what:<22} mount CPU {:.0} ms/GiB, {sw:.1} context switches/MiB",
                    m * 1e3
                );
            }
        }
        for (what, v) in [
            ("rate, mount / baseline mount", &mut paired),
            ("mount CPU, baseline / mount", &mut paired_cpu),
        ] {
            if v.is_empty() {
                continue;
            }
            let each: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
            let med = median(v);
            println!(
                "paired {what}, dd bs=1M: median {med:.2} (rounds: {})",
                each.join(" ")
            );
        }
    }
}
