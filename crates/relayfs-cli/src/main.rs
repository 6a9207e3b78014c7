//! `relayfs`: record relay channels to cpuN.out files, and the tools around
//! it (demo, verify, cat, stat, ls, bench), and kernel relay channels
//! (record on debugfs, blktrace).

mod args;
mod checker;
mod cmd;
mod demofmt;
mod mount;
mod natsio;
mod recorder;
mod util;
mod workload;

use clap::{Parser, Subcommand};

/// Relay channels in shared memory: record, inspect and demonstrate them.
#[derive(Debug, Parser)]
#[command(name = "relayfs", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show relay working end to end: a producer, a recorder, verification
    Demo(cmd::demo::Args),
    /// Record every buffer of a channel to OUTDIR/<buffer>.out (exit 0 when
    /// the channel closed and was drained, 3 when the producer died, 1 on
    /// error); a kernel relay channel directory in debugfs works too
    Record(cmd::record::Args),
    /// Trace a block device through the kernel's blktrace relay channel into
    /// files blkparse reads (<dev>.blktrace.<cpu>)
    Blktrace(cmd::blktrace::Args),
    /// Check a recording of demo records
    Verify(cmd::verify::Args),
    /// Consuming read of one relay file to standard output
    Cat(cmd::cat::Args),
    /// Print a recording of relayfs-tracing events (a `relayfs record`
    /// output directory) in time order, like tracing's fmt (--json: JSON
    /// lines; --follow: while it is being written)
    Decode(cmd::decode::Args),
    /// Counters of every buffer of a channel
    Stat(cmd::stat::Args),
    /// Channels under the relay directory
    Ls(cmd::ls::Args),
    /// Get recordings that `record --to nats://` put in a JetStream stream
    /// back into OUTDIR/<host>/<channel>/<buffer>.out files, with each
    /// channel's summary (exit 1 if sub-buffers are missing)
    Pull(cmd::pull::Args),
    /// End-to-end throughput: producer threads against `relayfs record` in
    /// another process (--sweep for the standard matrix, --find-lossless for
    /// the highest rate with no drops)
    Bench(cmd::bench::Args),
    /// Mount the relay directory (FUSE): every channel a directory, every
    /// buffer a file that any program reads with open, poll, read,
    /// sendfile and close, as a kernel relay file
    Mount(mount::Args),
    /// Unmount a `relayfs mount`
    Umount(mount::UmountArgs),
}

fn main() {
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Mount(a) => mount::run(a),
        Cmd::Umount(a) => mount::umount(a),
        Cmd::Demo(a) => cmd::demo::run(a),
        Cmd::Record(a) => cmd::record::run(a),
        Cmd::Blktrace(a) => cmd::blktrace::run(a),
        Cmd::Verify(a) => cmd::verify::run(a),
        Cmd::Cat(a) => cmd::cat::run(a),
        Cmd::Decode(a) => cmd::decode::run(a),
        Cmd::Stat(a) => cmd::stat::run(a),
        Cmd::Ls(a) => cmd::ls::run(a),
        Cmd::Bench(a) => cmd::bench::run(a),
        Cmd::Pull(a) => cmd::pull::run(a),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Messages name channels and files, whose names are anyone's
            // bytes: control characters are shown escaped.
            crate::util::errln!(
                "relayfs: error: {}",
                crate::util::escape_name(&format!("{e:#}"))
            );
            std::process::exit(1);
        }
    }
}
