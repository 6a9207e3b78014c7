//! Flight-recorder mode: the producer writes far more than the buffer
//! holds, overwriting the oldest sub-buffers, and nobody reads until it
//! stops; then the reader takes what is left: the last sub-buffers, oldest
//! first, whole records only.
//!
//! ```text
//! cargo run --example overwrite -- 100000
//! ```

use relayfs::{Channel, Mode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args().nth(1).map_or(Ok(100_000), |s| s.parse())?;
    let root = std::env::temp_dir().join(format!("relayfs-overwrite-{}", std::process::id()));
    let chan = Channel::builder("flight")
        .relay_dir(&root)
        .mode(Mode::Overwrite)
        .global(true)
        .subbuf_size(4096)
        .n_subbufs(8)
        .open()?;
    // Records are text lines, "event N".
    for i in 0..n {
        chan.write(format!("event {i}\n").as_bytes())?;
    }
    // The incident: the producer stops. A reader attaches and the
    // producer closes (a reader attached at the close keeps the files).
    let mut readers = chan.open_readers()?;
    chan.close()?;
    let mut text = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Some((_, len)) = readers.read_any(&mut buf)? {
        text.extend_from_slice(&buf[..len]);
    }
    drop(readers);
    let _ = std::fs::remove_dir(&root);
    let text = String::from_utf8(text)?;
    let lines: Vec<&str> = text.lines().collect();
    println!("wrote {n} events; the buffer kept the last {}", lines.len());
    if let (Some(first), Some(last)) = (lines.first(), lines.last()) {
        println!("first kept: {first}");
        println!("last kept: {last}");
    }
    Ok(())
}
