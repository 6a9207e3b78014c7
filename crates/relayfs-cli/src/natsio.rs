//! What `relayfs record --to nats://` and `relayfs pull` share: the broker's
//! address and credentials, connecting with clear errors, the stream, and
//! the wire format of a recording in a JetStream stream.
//!
//! Wire format (docs/DESIGN.md, "Many machines"): one message per complete
//! sub-buffer (or a few parts, split at byte boundaries, if its data exceeds
//! the server's `max_payload`), on the subject
//! `<prefix>.<host>.<channel>.<buffer>`, with the headers below; and at the
//! end of each buffer's recording an end message on the same subject whose
//! payload is an [`EndInfo`] (JSON).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectErrorKind, ConnectOptions};
use relayfs::BufferStats;
use serde::{Deserialize, Serialize};

use crate::recorder::report::End;

/// `Nats-Msg-Id`: JetStream stores a message once per id within the
/// stream's duplicate window.
pub(crate) const H_MSG_ID: &str = "Nats-Msg-Id";
/// `data` (a sub-buffer, or part of one) or `end`.
pub(crate) const H_KIND: &str = "Relayfs-Kind";
pub(crate) const H_HOST: &str = "Relayfs-Host";
pub(crate) const H_CHANNEL: &str = "Relayfs-Channel";
pub(crate) const H_BUFFER: &str = "Relayfs-Buffer";
/// The sub-buffer's sequence number in its buffer.
pub(crate) const H_SEQ: &str = "Relayfs-Seq";
/// This message's part, from 0, and the sub-buffer's number of parts.
pub(crate) const H_PART: &str = "Relayfs-Part";
pub(crate) const H_PARTS: &str = "Relayfs-Parts";
/// The sub-buffer's data bytes (all parts), and its records.
pub(crate) const H_BYTES: &str = "Relayfs-Bytes";
pub(crate) const H_RECORDS: &str = "Relayfs-Records";
/// The buffer's counters when the sub-buffer was read (JSON [`WireStats`]).
pub(crate) const H_STATS: &str = "Relayfs-Stats";
/// The channel's id and buffer count, as its headers say.
pub(crate) const H_CHANNEL_ID: &str = "Relayfs-Channel-Id";
pub(crate) const H_N_BUFFERS: &str = "Relayfs-N-Buffers";

/// Room left in a message for its headers.
pub(crate) const HEADER_ROOM: usize = 1024;
/// The smallest `max_payload` worth sending relay data through: the headers
/// and as much data again.
pub(crate) const MIN_PAYLOAD: usize = 2 * HEADER_ROOM;

/// Where the broker is and how to log in (flags of `record --to` and
/// `pull`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsArgs {
    /// JetStream stream that holds the recordings (`record --to` creates
    /// it if missing, with file storage, and uses an existing one as it is)
    #[arg(long, default_value = "relayfs")]
    pub stream: String,
    /// Subject prefix: messages go on PREFIX.<host>.<channel>.<buffer>
    #[arg(long = "subject", value_name = "PREFIX", default_value = "relayfs")]
    pub subject: String,
    /// User name (with --password), as in nats://USER:PASSWORD@HOST:PORT
    #[arg(long, requires = "password")]
    pub user: Option<String>,
    /// Password (with --user)
    #[arg(long, requires = "user")]
    pub password: Option<String>,
    /// Authentication token
    #[arg(long, conflicts_with_all = ["user", "creds", "nkey"])]
    pub token: Option<String>,
    /// NATS credentials file (JWT and NKey seed, as `nsc` writes it)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["user", "nkey"])]
    pub creds: Option<PathBuf>,
    /// File holding a user NKey seed (`SU...`), for a server that lists
    /// the user's public NKey
    #[arg(long, value_name = "FILE", conflicts_with = "user")]
    pub nkey: Option<PathBuf>,
}

/// The user NKey seed in the file `path`: its first line that starts with
/// `SU` (a seed file as `nk -gen user` writes it, or a seed alone), or a
/// clear error.
pub(crate) fn read_nkey_seed(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the NKey seed file {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| {
            l.starts_with("SU") && l.len() > 2 && l.bytes().all(|b| b.is_ascii_alphanumeric())
        })
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!(
                "{}: not an NKey seed file (expected a user seed, a line starting with SU)",
                path.display()
            )
        })
}

/// A broker address, checked: `nats://[USER:PASSWORD@]HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NatsUrl {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: Option<(String, String)>,
}

impl NatsUrl {
    /// Parses `url`, or says what a broker address looks like.
    pub(crate) fn parse(url: &str) -> Result<NatsUrl> {
        let bad = |why: &str| {
            anyhow!("bad NATS URL {url:?}: {why} (expected nats://HOST:PORT, e.g. nats://127.0.0.1:4222)")
        };
        let rest = url
            .strip_prefix("nats://")
            .ok_or_else(|| bad("it must start with nats://"))?;
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => {
                let (name, pass) = u
                    .split_once(':')
                    .ok_or_else(|| bad("user without a password"))?;
                (Some((name.to_string(), pass.to_string())), h)
            }
            None => (None, rest),
        };
        let hostport = hostport.trim_end_matches('/');
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| bad(&format!("{p:?} is not a port number")))?,
            ),
            None => (hostport, 4222),
        };
        if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
            return Err(bad("no host name"));
        }
        Ok(NatsUrl {
            host: host.to_string(),
            port,
            user,
        })
    }

    /// `HOST:PORT`, for the client and for messages (never the password).
    pub(crate) fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Connects to the broker, failing with a clear message: a bad address, a
/// refused connection, a failed login.
pub(crate) async fn connect(url: &NatsUrl, a: &NatsArgs, name: &str) -> Result<async_nats::Client> {
    let addr = url.addr();
    let mut opts = ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        // Reconnect for ever: an outage is waited out (the producer runs
        // on, counting what it drops), not an error.
        .max_reconnects(None);
    let mut how = "no credentials";
    if let Some((u, p)) = &url.user {
        opts = opts.user_and_password(u.clone(), p.clone());
        how = "the user and password in the URL";
    }
    if let (Some(u), Some(p)) = (&a.user, &a.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
        how = "--user and --password";
    }
    if let Some(t) = &a.token {
        opts = opts.token(t.clone());
        how = "--token";
    }
    if let Some(c) = &a.creds {
        opts = opts
            .credentials_file(c)
            .await
            .with_context(|| format!("cannot use the credentials file {}", c.display()))?;
        how = "--creds";
    }
    if let Some(k) = &a.nkey {
        opts = opts.nkey(read_nkey_seed(k)?);
        how = "--nkey";
    }
    match opts.connect(addr.as_str()).await {
        Ok(c) => Ok(c),
        Err(e) => Err(match e.kind() {
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => anyhow!(
                "nats://{addr}: authentication failed with {how} (give --user and --password, --token, --creds or --nkey as the server expects)"
            ),
            ConnectErrorKind::Io | ConnectErrorKind::TimedOut | ConnectErrorKind::MaxReconnects => {
                anyhow!("nats://{addr}: cannot connect ({e}): is nats-server running there, with -js?")
            }
            ConnectErrorKind::ServerParse | ConnectErrorKind::Dns => {
                anyhow!("nats://{addr}: not a usable address ({e})")
            }
            ConnectErrorKind::Tls => anyhow!("nats://{addr}: TLS error ({e})"),
        }),
    }
}

/// Refuses a host or channel name that `pull` could not make a file name
/// of, or that can't go in a header: empty, `.`, `..`, with a `/` or a
/// control character, or longer than 255 bytes.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        bail!(
            "{what} name {:?} can't be sent: it must be a plain file name (not empty, '.' or '..', no '/' or control characters, at most 255 bytes)",
            name
        );
    }
    Ok(())
}

/// A subject token made of `name`: NATS tokens can't hold `.`, spaces or
/// wildcards, so those become `_` (the headers carry the name itself).
pub(crate) fn token(name: &str) -> String {
    let t: String = name
        .chars()
        .map(|c| {
            if c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// Whether the NATS subject filter `pattern` takes `subject`.
pub(crate) fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The stream named in `a`, created if missing (file storage, limits
/// retention, a two-minute duplicate window), or the existing one if it
/// can hold `subject` messages of `msg_size` bytes; anything else is a
/// clear error.
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    a: &NatsArgs,
    subject: &str,
    msg_size: usize,
    replicas: usize,
) -> Result<stream::Stream> {
    let name = &a.stream;
    if name.is_empty() || name.contains(['.', '*', '>', ' ', '\t', '/']) {
        bail!(
            "--stream {name:?}: a stream name can't be empty or hold '.', '*', '>', '/' or spaces"
        );
    }
    // A JetStream cluster that is still electing its leaders answers
    // "unavailable" for a while: try for some seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stream = loop {
        let e = match js.get_stream(name).await {
            Ok(s) => break s,
            Err(e) => e,
        };
        let cfg = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{}.>", a.subject)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(120),
            num_replicas: replicas,
            ..Default::default()
        };
        match js.create_stream(cfg).await {
            Ok(s) => break s,
            // Another recorder may have made it meanwhile: the next pass
            // gets it.
            Err(c) if std::time::Instant::now() >= deadline => bail!(
                "cannot get or create the JetStream stream {name:?}: {e}; {c} (is JetStream enabled: nats-server -js?)"
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let info = stream.get_info().await.context("stream info")?;
    check_stream(&info.config, subject, msg_size)?;
    Ok(stream)
}

/// What an existing stream must be to hold a recording.
pub(crate) fn check_stream(c: &stream::Config, subject: &str, msg_size: usize) -> Result<()> {
    let name = &c.name;
    if !c.subjects.iter().any(|p| subject_matches(p, subject)) {
        bail!(
            "stream {name:?} has incompatible settings: its subjects {:?} don't take {subject} (use another --stream, or a --subject it takes)",
            c.subjects
        );
    }
    if c.retention != stream::RetentionPolicy::Limits {
        bail!(
            "stream {name:?} has incompatible settings: retention {:?} would remove messages before `relayfs pull` reads them (it needs limits retention)",
            c.retention
        );
    }
    if c.no_ack {
        bail!("stream {name:?} has incompatible settings: no_ack is set, so nothing stored is acknowledged");
    }
    if c.max_message_size > 0 && (c.max_message_size as usize) < msg_size {
        bail!(
            "stream {name:?} has incompatible settings: max_msg_size {} is smaller than a message ({msg_size} bytes)",
            c.max_message_size
        );
    }
    Ok(())
}

macro_rules! wire_stats {
    ($($f:ident),* $(,)?) => {
        /// A buffer's counters on the wire ([`BufferStats`], every field).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub(crate) struct WireStats { $(#[serde(default)] pub(crate) $f: u64,)* }
        impl From<BufferStats> for WireStats {
            fn from(s: BufferStats) -> WireStats { WireStats { $($f: s.$f,)* } }
        }
        impl From<WireStats> for BufferStats {
            fn from(s: WireStats) -> BufferStats {
                let mut b = BufferStats::default();
                $(b.$f = s.$f;)*
                b
            }
        }
    };
}

wire_stats!(
    records_completed,
    bytes_written,
    records_pending,
    subbufs_produced,
    subbufs_completed,
    subbufs_consumed,
    records_consumed,
    bytes_consumed,
    dropped_full,
    dropped_toobig,
    overwritten_records,
    overwritten_subbufs,
    discarded_records,
    discarded_subbufs,
    padding_bytes,
    last_toobig,
    dropped_corrupt,
    dropped_closed,
    corrupt,
    unread_at_close,
);

/// The payload of a buffer's end message: how its recording ended, and
/// its final counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EndInfo {
    pub(crate) end: End,
    /// The next sub-buffer sequence number (sub-buffers before it were all
    /// sent and acknowledged).
    pub(crate) next_seq: u64,
    pub(crate) stats: WireStats,
    /// Bytes and committed records given up in the sub-buffer a dead
    /// producer was writing.
    pub(crate) abandoned: Option<(u64, u64)>,
    pub(crate) channel_id: u64,
    pub(crate) n_buffers: u64,
    pub(crate) error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = NatsUrl::parse("nats://127.0.0.1:4333").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.user), ("127.0.0.1", 4333, None));
        let u = NatsUrl::parse("nats://a:b@h").unwrap();
        assert_eq!(u.port, 4222);
        assert_eq!(u.user, Some(("a".into(), "b".into())));
        for bad in [
            "http://h:1",
            "nats://",
            "nats://h:0",
            "nats://h:99999",
            "nats://h:x",
            "127.0.0.1:4222",
            "nats://u@h:1",
        ] {
            let e = NatsUrl::parse(bad).unwrap_err();
            assert!(format!("{e}").contains("bad NATS URL"), "{bad}: {e}");
        }
    }

    #[test]
    fn subjects() {
        assert!(subject_matches("relayfs.>", "relayfs.h.c.cpu0"));
        assert!(subject_matches("relayfs.*.c.*", "relayfs.h.c.cpu0"));
        assert!(!subject_matches("relayfs.*.d.*", "relayfs.h.c.cpu0"));
        assert!(!subject_matches("other.>", "relayfs.h.c.cpu0"));
        assert!(!subject_matches("relayfs.h", "relayfs.h.c"));
        assert_eq!(token("a.b c*>"), "a_b_c__");
        assert_eq!(token(""), "_");
    }

    #[test]
    fn stats_cross_the_wire_whole() {
        let s = BufferStats {
            records_consumed: 7,
            dropped_full: 3,
            unread_at_close: 1,
            ..Default::default()
        };
        let w = WireStats::from(s);
        let back: WireStats = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!(BufferStats::from(back), s);
    }
}
