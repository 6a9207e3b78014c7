//! `relayfs record CHANNEL -o OUTDIR`: the classic relay consumer. One reader
//! thread per buffer, driven by poll, moving data with `sendfile` into
//! `OUTDIR/<buffer>.out`, padding removed.

use std::path::PathBuf;

use anyhow::Result;

use crate::natsio::NatsUrl;
use crate::recorder::config::{RecordConfig, RecordFlags};
use crate::recorder::nats::{self, NatsTarget};
use crate::recorder::{kernel, relay};
// `bench` finds it here.
use crate::util;

/// Arguments of `relayfs record`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Channel name under the relay directory ($RELAYFS_DIR, default
    /// /dev/shm/relayfs), or a path to a channel directory
    pub channel: String,
    /// Output directory (created if missing), or a character device such as
    /// /dev/null that takes every buffer's output (to measure the recorder
    /// alone; no summary file then)
    #[arg(short, long, required_unless_present = "to")]
    pub out: Option<PathBuf>,
    /// Record into a NATS JetStream stream instead of files:
    /// nats://HOST:PORT (one message per sub-buffer, consumed only once the
    /// broker acknowledged it; `relayfs pull` gets the files back)
    #[arg(long, value_name = "URL", conflicts_with_all = ["out", "max_size", "max_files", "retry"])]
    pub to: Option<String>,
    /// With --to: the host name the recording is filed under (default:
    /// this machine's)
    #[arg(long, requires = "to")]
    pub host: Option<String>,
    /// With --to: sub-buffers sent and not yet acknowledged, per buffer, at
    /// most
    #[arg(long, requires = "to", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub window: u32,
    /// With --to: replicas of the stream, if it is created (a JetStream
    /// cluster)
    #[arg(long, requires = "to", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub replicas: u32,
    /// With --to: keep sub-buffers in DIR while the broker is down or slow
    /// (so that the producer need not drop them), and send them from there
    /// later; a recorder started again sends what is left there first
    #[arg(long, value_name = "DIR", requires = "to")]
    pub spool: Option<PathBuf>,
    /// With --spool: bytes the spool holds at most (e.g. 512M); past it the
    /// buffers fill and the producer drops, counting
    #[arg(long, requires = "spool", default_value = "1G", value_parser = crate::args::nonzero_size)]
    pub spool_max: u64,
    #[command(flatten)]
    pub nats: crate::natsio::NatsArgs,
    /// Wait for the channel to appear
    #[arg(long)]
    pub wait: bool,
    /// Base name of the buffer files (default: every relay buffer file in the
    /// directory; in a kernel channel directory, its one set of numbered
    /// files, e.g. trace0, trace1, ...)
    #[arg(long)]
    pub base: Option<String>,
    /// Rotate output files when one reaches SIZE (e.g. 64M): files are then
    /// named <buffer>.out.0, <buffer>.out.1, ...; a file may exceed SIZE by
    /// up to one sub-buffer, since a record is never split
    #[arg(long, value_parser = crate::args::nonzero_size)]
    pub max_size: Option<u64>,
    /// With --max-size, keep only the newest N files per buffer
    #[arg(long, requires = "max_size", value_parser = crate::args::files)]
    pub max_files: Option<u64>,
    /// When the output filesystem is full (ENOSPC, EDQUOT), wait and retry
    /// instead of stopping with an error (the producer keeps running and
    /// counts what it drops meanwhile)
    #[arg(long)]
    pub retry: bool,
    /// Stop after this many seconds (then drain what is ready)
    #[arg(long, short = 'w', value_name = "SECONDS", value_parser = crate::args::seconds)]
    pub duration: Option<f64>,
    /// Print the summary as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    /// No status line and no summary (errors only)
    #[arg(short, long)]
    pub quiet: bool,
}

impl Args {
    /// The settings these flags ask for, checked.
    fn config(&self) -> Result<RecordConfig> {
        RecordConfig::check(RecordFlags {
            out: self.out.clone().unwrap_or_default(),
            wait: self.wait,
            base: self.base.clone(),
            max_size: self.max_size,
            max_files: self.max_files,
            retry: self.retry,
            duration: self.duration,
            json: self.json,
            quiet: self.quiet,
        })
    }
}

/// Runs `relayfs record`; returns the exit code.
pub fn run(a: &Args) -> Result<i32> {
    util::catch_interrupts();
    let cfg = a.config()?;
    let dir = util::channel_dir(&a.channel);
    if let Some(url) = &a.to {
        let target = nats_target(a, url)?;
        if dir.is_dir() && relayfs::kernel::is_kernel_fs(&dir).unwrap_or(false) {
            anyhow::bail!(
                "{}: a kernel relay channel; --to records relayfs channels (record it with -o, then send the files)",
                dir.display()
            );
        }
        return nats::record_channel(&dir, &cfg, &target);
    }
    if dir.is_dir() && relayfs::kernel::is_kernel_fs(&dir).unwrap_or(false) {
        return kernel::record_kernel_channel(&dir, &cfg);
    }
    relay::record_channel(&dir, &cfg)
}

/// Where `--to` sends the channel, checked.
fn nats_target(a: &Args, url: &str) -> Result<NatsTarget> {
    let parsed = NatsUrl::parse(url)?;
    let host = a.host.clone().unwrap_or_else(nats::hostname);
    crate::natsio::check_name("host", &host)?;
    Ok(NatsTarget {
        shown: format!("nats://{}", parsed.addr()),
        url: parsed,
        nats: a.nats.clone(),
        host,
        window: a.window as usize,
        replicas: a.replicas as usize,
        spool: a.spool.clone(),
        spool_max: a.spool_max,
    })
}
