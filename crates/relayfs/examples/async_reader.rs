//! The whole-channel reader on tokio: wait for a channel, then read its
//! buffers as data comes, chunk by chunk, without blocking the runtime,
//! until the producer closes the channel; print what each buffer gave.
//!
//! ```text
//! cargo run --example async_reader --features tokio -- simple &
//! cargo run --example producer -- simple 100000
//! ```

use std::time::Duration;

use relayfs::{AsyncReaders, Readers};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "simple".into());
    // Waiting for the channel to be published sleeps: off the runtime.
    let opened =
        tokio::task::spawn_blocking(move || Readers::open(&name, Some(Duration::from_secs(60))))
            .await
            .expect("the opening task ran");
    let chan = match opened {
        Ok(c) => c,
        Err(e) => {
            eprintln!("async_reader: {e}");
            std::process::exit(1);
        }
    };
    let mut chan = AsyncReaders::new(chan);
    let mut bytes = vec![0u64; chan.len()];
    let mut chunks = 0u64;
    loop {
        // A chunk is at most a sub-buffer of one buffer: a record decoder
        // per buffer would be fed here.
        match chan.next_chunk().await {
            Ok(Some((i, chunk))) => {
                bytes[i] += chunk.len() as u64;
                chunks += 1;
            }
            Ok(None) => break,
            Err(e) => {
                eprintln!("async_reader: {e}");
                std::process::exit(1);
            }
        }
    }
    for (i, n) in bytes.iter().enumerate() {
        println!("cpu{i}: {n} bytes ({:?})", chan.end(i));
    }
    let st = chan.stats();
    println!(
        "read {} bytes in {chunks} chunks, {} records; lost {} records",
        bytes.iter().sum::<u64>(),
        st.records_consumed,
        st.lost()
    );
}
