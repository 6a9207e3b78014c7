//! A framed record stream's header announcing a huge payload costs memory
//! only as the payload's bytes really arrive.

use relayfs::frame::{encode_header, Decoder, FrameError, Records};

const CLAIM: u32 = 256 << 20;

#[test]
fn a_huge_length_costs_no_memory_before_its_bytes_come() {
    let mut d = Decoder::with_max_payload(CLAIM);
    d.feed(&encode_header(CLAIM, 0));
    assert!(d.next_record().is_none());
    // Room to read into: some, not the whole claimed payload.
    let room = d.spare(0).len();
    assert!(room > 0 && room < (4 << 20), "{room} bytes offered");
}

#[test]
fn a_huge_length_cut_short_is_truncated_and_a_big_record_still_decodes() {
    // A 16-byte stream claiming 256 MiB: truncated, at offset 0.
    let mut bytes = encode_header(CLAIM, 0).to_vec();
    bytes.extend_from_slice(&[7; 8]);
    let mut r = Records::new(relayfs::frame::ReadSource(&bytes[..]));
    match r.next_record() {
        Some(Err(FrameError::Truncated {
            offset: 0,
            have,
            need,
        })) => {
            assert_eq!(have, 16);
            assert_eq!(need, 8 + CLAIM as u64);
        }
        other => panic!("{other:?}"),
    }
    // A real 3 MiB record, read in pieces, comes out whole.
    let payload: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut bytes = encode_header(payload.len() as u32, 0).to_vec();
    bytes.extend_from_slice(&payload);
    let mut r = Records::new(relayfs::frame::ReadSource(&bytes[..]));
    let rec = r.next_record().unwrap().unwrap();
    assert_eq!(rec.payload, &payload[..]);
    assert!(r.next_record().is_none());
}
