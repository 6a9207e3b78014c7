//! The C library as C programs use it: the examples in `examples/c/` built
//! with `cc` against the built `librelayfs` (the producer against the shared
//! library through its soname, the reader against the static one), run
//! together, and what they recorded checked record by record; the header
//! checked against the library's exports and its struct layouts.
//!
//! Without a C compiler these tests fail under `CI=true` and are skipped,
//! loudly, elsewhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use relayfs_ffi::{rchan_buf, rchan_callbacks, relay_stats, relay_switch_info};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// Where `name` is on `PATH`, if anywhere.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// `name` from `PATH`, or `None` (the caller skips, saying so loudly)
/// outside CI; under `CI=true` a missing tool fails the test (`.ci/run`
/// installs every one of them).
fn tool(name: &str, what: &str) -> Option<PathBuf> {
    let found = which(name);
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("no {what} ({name}) found, and CI=true: install it (.ci/run does)");
        }
        eprintln!("\n*** skipped: no {what} ({name}) on PATH: this part is NOT tested ***\n");
    }
    found
}

/// The C compiler (`$CC`, else `cc`), or `None` (skip) outside CI.
fn c_compiler() -> Option<PathBuf> {
    let cc = std::env::var_os("CC")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| which("cc"));
    if cc.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("no C compiler (cc) found, and CI=true: the C library must be tested");
        }
        eprintln!("\n*** skipped: no C compiler (cc) on PATH: the C library is NOT tested ***\n");
    }
    cc
}

/// Where this test run's build of the library is: cargo builds the crate's
/// cdylib and staticlib (`librelayfs_ffi.so`, `.a`) beside the test
/// executable, in `target/<profile>/deps` (the copies one level up are
/// those of the last `cargo build`, maybe older).
fn built_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

/// The target directory's profile directory (`target/debug`).
fn profile_dir() -> PathBuf {
    built_dir().parent().unwrap().to_path_buf()
}

/// The built library installed under `prefix` by `install.sh`, as a C
/// program finds it: `lib/librelayfs.so.0` (+ `librelayfs.so`),
/// `lib/librelayfs.a`, `include/relayfs.h`, `lib/pkgconfig/relayfs.pc`.
/// Returns the library directory.
fn install(prefix: &Path) -> PathBuf {
    let prof = built_dir();
    for f in ["librelayfs_ffi.so", "librelayfs_ffi.a"] {
        assert!(
            prof.join(f).is_file(),
            "{f} not built in {} (cargo builds it with the crate's cdylib and staticlib targets)",
            prof.display()
        );
    }
    run_ok(
        Command::new("sh")
            .arg(Path::new(MANIFEST).join("install.sh"))
            .arg(prefix)
            .arg(&prof),
    );
    let lib = prefix.join("lib");
    let version = env!("CARGO_PKG_VERSION");
    for (link, target) in [
        ("librelayfs.so", "librelayfs.so.0".to_string()),
        ("librelayfs.so.0", format!("librelayfs.so.{version}")),
    ] {
        assert_eq!(
            std::fs::read_link(lib.join(link)).unwrap(),
            Path::new(&target)
        );
    }
    assert!(lib.join("librelayfs.a").is_file());
    assert!(prefix.join("include/relayfs.h").is_file());
    let pc = std::fs::read_to_string(lib.join("pkgconfig/relayfs.pc")).unwrap();
    assert!(pc.contains(&format!("Version: {version}")), "{pc}");
    assert!(!pc.contains('@'), "every placeholder filled in: {pc}");
    lib
}

fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Compiles `src` into `out`: against the shared library, or the static one.
fn compile(cc: &Path, lib: &Path, src: &Path, out: &Path, shared: bool) {
    let mut c = Command::new(cc);
    c.args([
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
        "-O1",
    ])
    .arg("-I")
    .arg(lib.parent().unwrap().join("include"))
    .arg(src)
    .arg("-o")
    .arg(out);
    if shared {
        c.arg("-L").arg(lib).args(["-lrelayfs", "-lpthread"]);
    } else {
        // What a Rust static library needs from the system (`rustc
        // --print native-static-libs`); the same list is in relayfs.pc.
        c.arg(lib.join("librelayfs.a")).args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ]);
    }
    run_ok(&mut c);
}

/// A demo record's fields, as `relayfs verify` reads them.
struct Rec {
    writer: u32,
    seq: u64,
}

/// An independent check of the demo records in `bytes`: every record whole
/// (magic, length, payload), per writer in increasing order within the
/// file. Panics naming the first defect.
fn parse_records(name: &str, bytes: &[u8], len: usize) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        let rest = &bytes[off..];
        assert!(rest.len() >= 24, "{name}: truncated record at {off}");
        let u32_at = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().unwrap());
        assert_eq!(u32_at(0), 0x3159_4C52, "{name}: bad magic at {off}");
        let rlen = u32_at(4) as usize;
        assert_eq!(rlen, len, "{name}: record length at {off}");
        assert!(rest.len() >= rlen, "{name}: truncated record at {off}");
        let writer = u32_at(8);
        let seq = u64::from_le_bytes(rest[16..24].try_into().unwrap());
        for (i, &b) in rest[..rlen].iter().enumerate().skip(24) {
            let want = (seq.wrapping_mul(31) + writer as u64 * 17 + i as u64) as u8;
            assert_eq!(b, want, "{name}: payload byte {i} of the record at {off}");
        }
        out.push(Rec { writer, seq });
        off += rlen;
    }
    out
}

/// The producer's counters, from its JSON line.
fn counter(json: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\": ");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

struct Run {
    threads: u32,
    count: u64,
    len: usize,
    subbuf_size: u64,
    n_subbufs: u64,
    sendfile: bool,
}

/// Builds the examples, runs the reader and then the producer, and checks
/// the recording: every record offered is in a `cpuN.out` exactly once, or
/// counted lost by the producer, and the counts agree exactly.
fn producer_and_reader(run: Run) {
    let Some(cc) = c_compiler() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let lib = install(&tmp.path().join("prefix"));
    let ex = Path::new(MANIFEST).join("examples/c");
    let producer = tmp.path().join("producer");
    let reader = tmp.path().join("reader");
    compile(&cc, &lib, &ex.join("producer.c"), &producer, true);
    compile(&cc, &lib, &ex.join("reader.c"), &reader, false);

    let chan = tmp.path().join("chan");
    let out = tmp.path().join("out");
    std::fs::create_dir(&chan).unwrap();
    std::fs::create_dir(&out).unwrap();

    let mut rd = Command::new(&reader);
    rd.arg(&chan).arg(&out);
    if run.sendfile {
        rd.arg("--sendfile");
    }
    let rd = rd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let prod = Command::new(&producer)
        .arg(&chan)
        .arg(run.threads.to_string())
        .arg(run.count.to_string())
        .arg(run.len.to_string())
        .arg(run.subbuf_size.to_string())
        .arg(run.n_subbufs.to_string())
        .env("LD_LIBRARY_PATH", &lib)
        .output()
        .unwrap();
    let rd = rd.wait_with_output().unwrap();
    let pjson = String::from_utf8_lossy(&prod.stdout).into_owned();
    assert!(
        prod.status.success(),
        "producer: {}\n{pjson}{}",
        prod.status,
        String::from_utf8_lossy(&prod.stderr)
    );
    assert!(
        rd.status.success(),
        "reader: {}\n{}{}",
        rd.status,
        String::from_utf8_lossy(&rd.stdout),
        String::from_utf8_lossy(&rd.stderr)
    );

    // Independent check of every output file.
    let offered = run.threads as u64 * run.count;
    let lost = counter(&pjson, "dropped");
    let mut seen = BTreeSet::new();
    let mut files = 0;
    let mut bytes = 0u64;
    for ent in std::fs::read_dir(&out).unwrap() {
        let p = ent.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("cpu") && name.ends_with(".out"), "{name}");
        files += 1;
        let data = std::fs::read(&p).unwrap();
        bytes += data.len() as u64;
        let mut last = vec![None::<u64>; run.threads as usize];
        for r in parse_records(&name, &data, run.len) {
            assert!(r.writer < run.threads, "{name}: writer {}", r.writer);
            assert!(r.seq < run.count, "{name}: seq {}", r.seq);
            let l = &mut last[r.writer as usize];
            assert!(
                l.is_none_or(|l| l < r.seq),
                "{name}: writer {} out of order",
                r.writer
            );
            *l = Some(r.seq);
            assert!(seen.insert((r.writer, r.seq)), "{name}: duplicate record");
        }
    }
    let found = seen.len() as u64;
    let rjson = String::from_utf8_lossy(&rd.stdout).into_owned();
    assert_eq!(counter(&rjson, "buffers"), files, "one output per buffer");
    assert_eq!(counter(&rjson, "bytes"), bytes, "the reader's byte count");
    assert_eq!(
        found + lost,
        offered,
        "records found ({found}) + counted lost ({lost}) = offered ({offered}); producer: {pjson}"
    );
    // At close the attached reader may still be draining: what it had
    // consumed by then is at most what it recorded.
    assert!(
        counter(&pjson, "consumed") <= found,
        "consumed at close <= recorded"
    );
    assert!(found > 0, "something was recorded");
    // The channel removed its files at close; the directory (ours) stays.
    assert_eq!(std::fs::read_dir(&chan).unwrap().count(), 0);

    // And `relayfs verify`, with the producer's counters, when the CLI is
    // built in the same target directory.
    let cli = profile_dir().join("relayfs");
    if cli.is_file() {
        let counters = tmp.path().join("producer.json");
        std::fs::write(&counters, &pjson).unwrap();
        run_ok(
            Command::new(&cli)
                .arg("verify")
                .arg(&out)
                .arg("--counters")
                .arg(&counters),
        );
    } else {
        eprintln!(
            "note: {} not built: recording checked by this test only (cargo build -p relayfs-cli adds relayfs verify)",
            cli.display()
        );
    }
}

#[test]
fn example_client_records_every_record_or_counts_it() {
    producer_and_reader(Run {
        threads: 4,
        count: 5000,
        len: 100,
        subbuf_size: 65536,
        n_subbufs: 8,
        sendfile: false,
    });
}

#[test]
fn example_client_with_sendfile_and_a_small_ring_counts_its_drops() {
    producer_and_reader(Run {
        threads: 3,
        count: 4000,
        len: 64,
        subbuf_size: 4096,
        n_subbufs: 2,
        sendfile: true,
    });
}

/// Function names declared in the header (outside comments).
fn header_functions() -> BTreeSet<String> {
    let h = std::fs::read_to_string(Path::new(MANIFEST).join("include/relayfs.h")).unwrap();
    let mut code = String::new();
    let mut rest = h.as_str();
    while let Some(i) = rest.find("/*") {
        code.push_str(&rest[..i]);
        let j = rest[i..].find("*/").expect("unterminated comment") + i + 2;
        rest = &rest[j..];
    }
    code.push_str(rest);
    let mut names = BTreeSet::new();
    for (i, _) in code.match_indices('(') {
        let before = code[..i].trim_end();
        let name: String = before
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        // A declaration: `type name(`, or `type *name(`; not `(*member)(`.
        let lead = before[..before.len() - name.len()].trim_end();
        if !name.is_empty()
            && (lead.ends_with(|c: char| c.is_ascii_alphanumeric()) || lead.ends_with('*'))
            && !lead.ends_with("(*")
            && name != "defined"
        {
            names.insert(name);
        }
    }
    names
}

/// Functions the library exports (`#[no_mangle]` in its source).
fn exported_functions() -> BTreeSet<String> {
    let src = std::fs::read_to_string(Path::new(MANIFEST).join("src/lib.rs")).unwrap();
    let mut names = BTreeSet::new();
    let mut after_no_mangle = false;
    for line in src.lines() {
        let l = line.trim();
        if l == "#[no_mangle]" {
            after_no_mangle = true;
        } else if after_no_mangle && l.contains("extern \"C\" fn ") {
            let name = l.split("fn ").nth(1).unwrap();
            names.insert(name.split('(').next().unwrap().to_string());
            after_no_mangle = false;
        }
    }
    names
}

#[test]
fn header_declares_exactly_what_the_library_exports() {
    let declared = header_functions();
    let exported = exported_functions();
    assert!(exported.len() > 20, "{exported:?}");
    assert_eq!(
        declared, exported,
        "relayfs.h against #[no_mangle] functions"
    );
    // And the shared library itself, where nm is there to ask.
    let so = built_dir().join("librelayfs_ffi.so");
    if let (Some(nm), true) = (tool("nm", "symbol lister"), so.is_file()) {
        let out = run_ok(Command::new(nm).args(["-D", "--defined-only"]).arg(&so));
        let syms: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
                (kind == "T").then(|| name.to_string())
            })
            .collect();
        assert_eq!(syms, exported, "the .so's exported functions");
    }
}

#[test]
fn header_struct_layouts_and_constants_match_the_library() {
    let Some(cc) = c_compiler() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("layout.c");
    std::fs::write(
        &src,
        r#"#include <stddef.h>
#include <stdio.h>
#include <relayfs.h>
#define P(t, m) printf(#t "." #m " %zu\n", offsetof(struct t, m))
int main(void) {
    printf("rchan_buf %zu\nrelay_switch_info %zu\nrchan_callbacks %zu\nrelay_stats %zu\n",
           sizeof(struct rchan_buf), sizeof(struct relay_switch_info),
           sizeof(struct rchan_callbacks), sizeof(struct relay_stats));
    P(rchan_buf, full); P(rchan_buf, cpu);
    P(relay_switch_info, full); P(relay_switch_info, overwrite);
    P(rchan_callbacks, remove_buf_file); P(rchan_callbacks, subbuf_start_reserve);
    P(rchan_callbacks, overwrite);
    P(relay_stats, lost); P(relay_stats, corrupt); P(relay_stats, unread_at_close);
    printf("poll %d %d %d %d\nmax_pending %d\n", RELAY_POLL_TIMEOUT, RELAY_POLL_READABLE,
           RELAY_POLL_CLOSED, RELAY_POLL_PRODUCER_GONE, RELAY_MAX_PENDING);
    return 0;
}
"#,
    )
    .unwrap();
    let exe = tmp.path().join("layout");
    run_ok(
        Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Werror", "-I"])
            .arg(Path::new(MANIFEST).join("include"))
            .arg(&src)
            .arg("-o")
            .arg(&exe),
    );
    let out = String::from_utf8(run_ok(&mut Command::new(&exe)).stdout).unwrap();
    use std::mem::{offset_of, size_of};
    macro_rules! field {
        ($t:ty, $m:ident) => {
            format!(
                "{}.{} {}",
                stringify!($t),
                stringify!($m),
                offset_of!($t, $m)
            )
        };
    }
    let want = [
        format!("rchan_buf {}", size_of::<rchan_buf>()),
        format!("relay_switch_info {}", size_of::<relay_switch_info>()),
        format!("rchan_callbacks {}", size_of::<rchan_callbacks>()),
        format!("relay_stats {}", size_of::<relay_stats>()),
        field!(rchan_buf, full),
        field!(rchan_buf, cpu),
        field!(relay_switch_info, full),
        field!(relay_switch_info, overwrite),
        field!(rchan_callbacks, remove_buf_file),
        field!(rchan_callbacks, subbuf_start_reserve),
        field!(rchan_callbacks, overwrite),
        field!(relay_stats, lost),
        field!(relay_stats, corrupt),
        field!(relay_stats, unread_at_close),
        format!(
            "poll {} {} {} {}",
            relayfs_ffi::RELAY_POLL_TIMEOUT,
            relayfs_ffi::RELAY_POLL_READABLE,
            relayfs_ffi::RELAY_POLL_CLOSED,
            relayfs_ffi::RELAY_POLL_PRODUCER_GONE
        ),
        format!("max_pending {}", relayfs_ffi::RELAY_MAX_PENDING),
    ];
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn pkg_config_finds_the_installed_library() {
    let Some(cc) = c_compiler() else { return };
    let Some(pkg_config) = tool("pkg-config", "pkg-config") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let lib = install(&tmp.path().join("prefix"));
    let flags = run_ok(
        Command::new(pkg_config)
            .args(["--cflags", "--libs", "relayfs"])
            .env("PKG_CONFIG_PATH", lib.join("pkgconfig")),
    );
    let flags = String::from_utf8(flags.stdout).unwrap();
    let exe = tmp.path().join("producer");
    run_ok(
        Command::new(cc)
            .args(["-std=c11", "-Wall", "-Werror"])
            .arg(Path::new(MANIFEST).join("examples/c/producer.c"))
            .arg("-o")
            .arg(&exe)
            .args(flags.split_whitespace())
            .arg("-lpthread"),
    );
    // Linked through the soname, so that librelayfs.so.1 can come beside it.
    if let Some(readelf) = tool("readelf", "ELF reader") {
        let d = run_ok(Command::new(readelf).arg("-d").arg(&exe));
        let d = String::from_utf8_lossy(&d.stdout);
        assert!(d.contains("Shared library: [librelayfs.so.0]"), "{d}");
    }
    // It runs: bad arguments get its usage, through the library's loader.
    let out = Command::new(&exe)
        .env("LD_LIBRARY_PATH", &lib)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Every exported function runs its body under `guard` (`catch_unwind`), or
/// only calls one that does, or can't panic (`relay_version`).
#[test]
fn every_exported_function_catches_panics() {
    let src = std::fs::read_to_string(Path::new(MANIFEST).join("src/lib.rs")).unwrap();
    let exported = exported_functions();
    let mut bodies = src.split("#[no_mangle]").skip(1);
    let mut checked = 0;
    for body in bodies.by_ref() {
        let name = body
            .split("fn ")
            .nth(1)
            .and_then(|r| r.split('(').next())
            .unwrap();
        // The function's text: up to the first line that closes it.
        let text = &body[..body.find("\n}\n").unwrap_or(body.len())];
        let delegates = exported
            .iter()
            .any(|other| other != name && text.contains(&format!("{{ {other}(")));
        assert!(
            text.contains("guard(") || delegates || name == "relay_version",
            "{name} does not catch panics"
        );
        checked += 1;
    }
    assert_eq!(checked, exported.len());
}

#[test]
fn the_header_serves_cplusplus() {
    let Some(cxx) = tool("c++", "C++ compiler") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let lib = install(&tmp.path().join("prefix"));
    let src = tmp.path().join("use.cc");
    std::fs::write(
        &src,
        r#"#include <cerrno>
#include <relayfs.h>
int main() {
    struct rchan_callbacks cb {};
    cb.overwrite = 1;
    struct rchan *c = relay_open(nullptr, nullptr, 4096, 2, &cb, nullptr);
    if (c != nullptr || errno != EINVAL) return 1;
    if (relay_write(nullptr, "x", 1) != -EINVAL) return 2;
    return relay_last_error() != nullptr ? 0 : 3;
}
"#,
    )
    .unwrap();
    let exe = tmp.path().join("use");
    run_ok(
        Command::new(cxx)
            .args([
                "-std=c++11",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-I",
            ])
            .arg(lib.parent().unwrap().join("include"))
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .arg("-L")
            .arg(&lib)
            .arg("-lrelayfs"),
    );
    run_ok(Command::new(&exe).env("LD_LIBRARY_PATH", &lib));
}

#[test]
fn a_null_parent_makes_the_channel_directory_in_the_relay_root() {
    let Some(cc) = c_compiler() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let lib = install(&tmp.path().join("prefix"));
    let src = tmp.path().join("root.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <relayfs.h>
int main(void) {
    struct rchan *c = relay_open("mytrace", NULL, 4096, 2, NULL, NULL);
    if (!c) { fprintf(stderr, "%s\n", relay_last_error()); return 1; }
    printf("%s\n", relay_buffer_path(c, 0));
    fflush(stdout);
    return relay_close(c) == 0 ? 0 : 1;
}
"#,
    )
    .unwrap();
    let exe = tmp.path().join("root");
    compile(&cc, &lib, &src, &exe, true);
    let root = tmp.path().join("relay");
    let out = run_ok(
        Command::new(&exe)
            .env("LD_LIBRARY_PATH", &lib)
            .env("RELAYFS_DIR", &root),
    );
    let path = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        Path::new(path.trim()),
        root.join("mytrace/mytrace0"),
        "<relay root>/<base_filename>/<base_filename>N"
    );
    assert!(
        !root.join("mytrace").exists(),
        "the directory it made is gone"
    );
}
