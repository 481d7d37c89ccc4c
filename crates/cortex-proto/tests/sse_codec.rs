//! Tests of the SSE codec against the WHATWG event stream interpretation
//! rules, plus encode/decode round trips under arbitrary chunking.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use cortex_proto::sse::{Decoder, Event, SseError, comment, encode, encode_into};
use proptest::prelude::*;

/// Decodes a whole stream in one chunk and finishes it.
fn decode(input: &[u8]) -> Vec<Event> {
    let mut decoder = Decoder::new();
    let events = decoder.feed(input).unwrap();
    decoder.finish();
    events
}

/// Decodes a stream fed one byte at a time.
fn decode_bytewise(input: &[u8]) -> Vec<Event> {
    let mut decoder = Decoder::new();
    let mut events = Vec::new();
    for byte in input {
        events.extend(decoder.feed(std::slice::from_ref(byte)).unwrap());
    }
    decoder.finish();
    events
}

/// Decodes in one chunk and byte by byte, checks both agree, returns events.
fn decode_both(input: &[u8]) -> Vec<Event> {
    let whole = decode(input);
    assert_eq!(whole, decode_bytewise(input), "chunking changed the result");
    whole
}

fn ev(data: &str) -> Event {
    Event::message(data)
}

// ---------------------------------------------------------------- decoding

#[test]
fn single_event() {
    assert_eq!(decode_both(b"data: hello\n\n"), vec![ev("hello")]);
}

#[test]
fn multi_line_data_joined_with_lf() {
    assert_eq!(
        decode_both(b"data: a\ndata: b\ndata:\ndata: c\n\n"),
        vec![ev("a\nb\n\nc")]
    );
}

#[test]
fn only_one_trailing_lf_is_stripped() {
    assert_eq!(decode_both(b"data: a\ndata:\n\n"), vec![ev("a\n")]);
}

#[test]
fn lf_cr_and_crlf_line_ends() {
    let expected = vec![ev("a\nb"), ev("c")];
    assert_eq!(decode_both(b"data: a\ndata: b\n\ndata: c\n\n"), expected);
    assert_eq!(
        decode_both(b"data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n"),
        expected
    );
    assert_eq!(decode_both(b"data: a\rdata: b\r\rdata: c\r\r"), expected);
    // Mixed in one stream.
    assert_eq!(
        decode_both(b"data: a\rdata: b\r\n\ndata: c\n\r\n"),
        expected
    );
}

#[test]
fn cr_at_chunk_end_then_lf_is_one_line_end() {
    let mut decoder = Decoder::new();
    assert_eq!(decoder.feed(b"data: a\r").unwrap(), vec![]);
    // If CR and LF were two line ends, the LF would be a blank line and
    // dispatch "a" on its own.
    assert_eq!(decoder.feed(b"\ndata: b\r").unwrap(), vec![]);
    assert_eq!(decoder.feed(b"\n\r").unwrap(), vec![ev("a\nb")]);
    assert_eq!(decoder.feed(b"\n").unwrap(), vec![]);
    assert!(!decoder.finish());
}

#[test]
fn cr_at_chunk_end_then_cr_is_two_line_ends() {
    let mut decoder = Decoder::new();
    assert_eq!(decoder.feed(b"data: a\r").unwrap(), vec![]);
    assert_eq!(decoder.feed(b"\r").unwrap(), vec![ev("a")]);
}

#[test]
fn cr_then_empty_chunk_then_lf() {
    let mut decoder = Decoder::new();
    assert_eq!(decoder.feed(b"data: a\r").unwrap(), vec![]);
    assert_eq!(decoder.feed(b"").unwrap(), vec![]);
    assert_eq!(decoder.feed(b"\ndata: b\n\n").unwrap(), vec![ev("a\nb")]);
}

#[test]
fn bom_whole_is_skipped() {
    assert_eq!(decode_both(b"\xEF\xBB\xBFdata: x\n\n"), vec![ev("x")]);
}

#[test]
fn bom_split_across_chunks_is_skipped() {
    let stream = b"\xEF\xBB\xBFdata: x\n\n";
    for first in 0..=stream.len() {
        for second in first..=stream.len() {
            let mut decoder = Decoder::new();
            let mut events = decoder.feed(&stream[..first]).unwrap();
            events.extend(decoder.feed(&stream[first..second]).unwrap());
            events.extend(decoder.feed(&stream[second..]).unwrap());
            assert_eq!(events, vec![ev("x")], "split at {first}/{second}");
        }
    }
}

#[test]
fn bom_only_skipped_at_stream_start() {
    // A second BOM is part of the field name, which is then unknown.
    assert_eq!(
        decode_both(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\ndata: y\n\n"),
        vec![ev("y")]
    );
    // A BOM after the first line is not skipped either.
    assert_eq!(
        decode_both(b"data: y\n\n\xEF\xBB\xBFdata: x\n\n"),
        vec![ev("y")]
    );
    // A BOM inside data is kept.
    assert_eq!(
        decode_both("data: \u{FEFF}x\n\n".as_bytes()),
        vec![ev("\u{FEFF}x")]
    );
}

#[test]
fn partial_bom_prefix_is_line_content() {
    // EF BB followed by something else is not a BOM: the bytes belong to
    // the first line (and decode lossily), making an unknown field here.
    assert_eq!(
        decode_both(b"\xEF\xBBdata: x\n\ndata: y\n\n"),
        vec![ev("y")]
    );
    // Same with a prefix that happens to be a whole line.
    assert_eq!(decode_both(b"\xEF\xBB\ndata: y\n\n"), vec![ev("y")]);
}

#[test]
fn comments_are_ignored() {
    assert_eq!(
        decode_both(b": hello\n:\ndata: a\n: in the middle\ndata: b\n\n"),
        vec![ev("a\nb")]
    );
    // A comment alone followed by a blank line dispatches nothing.
    assert_eq!(decode_both(b": keep-alive\n\n"), vec![]);
}

#[test]
fn only_one_leading_space_is_removed() {
    assert_eq!(decode_both(b"data:x\n\n"), vec![ev("x")]);
    assert_eq!(decode_both(b"data: x\n\n"), vec![ev("x")]);
    assert_eq!(decode_both(b"data:  x \n\n"), vec![ev(" x ")]);
    assert_eq!(decode_both(b"data:\tx\n\n"), vec![ev("\tx")]);
}

#[test]
fn value_may_contain_colons() {
    assert_eq!(decode_both(b"data: {\"a\": 1}\n\n"), vec![ev("{\"a\": 1}")]);
}

#[test]
fn field_without_colon_has_empty_value() {
    assert_eq!(decode_both(b"data\n\n"), vec![ev("")]);
    assert_eq!(decode_both(b"data\ndata\n\n"), vec![ev("\n")]);
    // `event` without a value resets the type to the default.
    assert_eq!(
        decode_both(b"event: foo\nevent\ndata: x\n\n"),
        vec![ev("x")]
    );
    // `id` without a value resets the id to "".
    assert_eq!(
        decode_both(b"id: 1\ndata: a\n\nid\ndata: b\n\n"),
        vec![ev("a").with_id("1"), ev("b").with_id("")]
    );
}

#[test]
fn field_names_are_case_sensitive_and_unknown_ignored() {
    assert_eq!(
        decode_both(b"Data: no\nfoo: bar\ndata : no\ndata: yes\n\n"),
        vec![ev("yes")]
    );
}

#[test]
fn event_type() {
    let events = decode_both(b"event: update\ndata: x\n\ndata: y\n\n");
    assert_eq!(events, vec![ev("x").with_event("update"), ev("y")]);
    assert_eq!(events[0].event_type(), "update");
    assert_eq!(events[1].event_type(), "message");
    // Last `event` in a block wins.
    assert_eq!(
        decode_both(b"event: a\nevent: b\ndata: x\n\n"),
        vec![ev("x").with_event("b")]
    );
    // An empty type is the default type.
    assert_eq!(decode_both(b"event:\ndata: x\n\n"), vec![ev("x")]);
}

#[test]
fn retry_valid() {
    let mut decoder = Decoder::new();
    let events = decoder
        .feed(b"retry: 1500\ndata: x\n\ndata: y\n\n")
        .unwrap();
    assert_eq!(events, vec![ev("x").with_retry(1500), ev("y")]);
    assert_eq!(decoder.retry(), Some(1500));
    assert_eq!(
        decode_both(b"retry:0\ndata: x\n\n"),
        vec![ev("x").with_retry(0)]
    );
}

#[test]
fn retry_invalid_is_ignored() {
    for bad in [
        &b"retry: 10a"[..],
        b"retry: -1",
        b"retry: +1",
        b"retry: 1.5",
        b"retry: 1 ",
        b"retry:  1",
        b"retry:",
        b"retry",
        b"retry: \xD9\xA1", // ARABIC-INDIC DIGIT ONE is not an ASCII digit
        b"retry: 99999999999999999999999999",
    ] {
        let mut decoder = Decoder::new();
        let mut stream = b"retry: 7\n\n".to_vec();
        stream.extend_from_slice(bad);
        stream.extend_from_slice(b"\ndata: x\n\n");
        let events = decoder.feed(&stream).unwrap();
        assert_eq!(events, vec![ev("x")], "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(
            decoder.retry(),
            Some(7),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn retry_applies_even_without_dispatch() {
    let mut decoder = Decoder::new();
    assert_eq!(decoder.feed(b"retry: 3000\n\n").unwrap(), vec![]);
    assert_eq!(decoder.retry(), Some(3000));
    // The block's retry does not leak into the next event.
    assert_eq!(decoder.feed(b"data: x\n\n").unwrap(), vec![ev("x")]);
}

#[test]
fn id_with_nul_is_ignored() {
    assert_eq!(
        decode_both(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"),
        vec![ev("a").with_id("1"), ev("b").with_id("1")]
    );
    // NUL in data or event is fine.
    assert_eq!(
        decode_both(b"event: e\x00\ndata: a\x00b\n\n"),
        vec![ev("a\0b").with_event("e\0")]
    );
}

#[test]
fn id_persists_across_events() {
    let mut decoder = Decoder::new();
    assert_eq!(decoder.last_event_id(), None);
    let events = decoder
        .feed(b"data: a\n\nid: 1\ndata: b\n\ndata: c\n\nid: 2\ndata: d\n\ndata: e\n\n")
        .unwrap();
    assert_eq!(
        events,
        vec![
            ev("a"),
            ev("b").with_id("1"),
            ev("c").with_id("1"),
            ev("d").with_id("2"),
            ev("e").with_id("2"),
        ]
    );
    assert_eq!(decoder.last_event_id(), Some("2"));
}

#[test]
fn id_position_within_block_does_not_matter() {
    assert_eq!(
        decode_both(b"data: a\nid: 9\n\n"),
        vec![ev("a").with_id("9")]
    );
}

#[test]
fn empty_data_block_not_dispatched_but_id_persists() {
    let mut decoder = Decoder::new();
    assert_eq!(
        decoder
            .feed(b"id: 5\nevent: ignored\nretry: 10\n\n")
            .unwrap(),
        vec![]
    );
    assert_eq!(decoder.last_event_id(), Some("5"));
    // The event type was reset with the data buffer.
    assert_eq!(
        decoder.feed(b"data: x\n\n").unwrap(),
        vec![ev("x").with_id("5")]
    );
    // Blank lines alone dispatch nothing.
    assert_eq!(decoder.feed(b"\n\n\r\n\r").unwrap(), vec![]);
}

#[test]
fn last_event_id_updates_at_blank_line() {
    let mut decoder = Decoder::new();
    decoder.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n").unwrap();
    assert_eq!(decoder.last_event_id(), Some("1"));
    decoder.feed(b"\n").unwrap();
    assert_eq!(decoder.last_event_id(), Some("2"));
}

#[test]
fn data_alone_dispatches_empty_string() {
    assert_eq!(decode_both(b"data:\n\n"), vec![ev("")]);
    assert_eq!(decode_both(b"data: \n\n"), vec![ev("")]);
}

#[test]
fn json_like_data_is_never_dropped() {
    let events = decode_both(b"data: 0\n\ndata: \"\"\n\ndata: {}\n\ndata: null\n\ndata: []\n\n");
    assert_eq!(
        events,
        vec![ev("0"), ev("\"\""), ev("{}"), ev("null"), ev("[]")]
    );
    assert_eq!(events[0].json::<u32>().unwrap(), 0);
    assert_eq!(events[1].json::<String>().unwrap(), "");
    assert_eq!(
        events[2].json::<serde_json::Value>().unwrap(),
        serde_json::json!({})
    );
    assert_eq!(
        events[3].json::<serde_json::Value>().unwrap(),
        serde_json::Value::Null
    );
    assert!(ev("").json::<serde_json::Value>().is_err());
}

#[test]
fn multi_line_json() {
    let events = decode_both(b"data: {\ndata:   \"a\": [1,\ndata: 2]\ndata: }\n\n");
    let value: serde_json::Value = events[0].json().unwrap();
    assert_eq!(value, serde_json::json!({"a": [1, 2]}));
}

#[test]
fn invalid_utf8_is_decoded_lossily() {
    assert_eq!(decode_both(b"data: a\xFFb\n\n"), vec![ev("a\u{FFFD}b")]);
    // A truncated sequence before the line end.
    assert_eq!(
        decode_both(b"data: a\xE2\x82\ndata: b\n\n"),
        vec![ev("a\u{FFFD}\nb")]
    );
}

#[test]
fn utf8_split_across_chunks() {
    let stream = "data: h\u{e9}llo \u{1F600} \u{4e16}\n\n".as_bytes();
    for split in 0..=stream.len() {
        let mut decoder = Decoder::new();
        let mut events = decoder.feed(&stream[..split]).unwrap();
        events.extend(decoder.feed(&stream[split..]).unwrap());
        assert_eq!(events, vec![ev("h\u{e9}llo \u{1F600} \u{4e16}")]);
    }
}

#[test]
fn finish_discards_incomplete_event() {
    let mut decoder = Decoder::new();
    assert_eq!(
        decoder.feed(b"data: a\n\nid: 7\ndata: b\n").unwrap(),
        vec![ev("a")]
    );
    assert!(decoder.finish());
    // The unfinished block's id was not committed.
    assert_eq!(decoder.last_event_id(), None);

    // An unterminated line.
    let mut decoder = Decoder::new();
    decoder.feed(b"data: a\n\ndata: partial").unwrap();
    assert!(decoder.finish());

    // Nothing pending.
    let mut decoder = Decoder::new();
    decoder.feed(b"data: a\n\n: comment\n").unwrap();
    assert!(!decoder.finish());
    assert!(!Decoder::new().finish());
}

#[test]
fn finish_resets_for_a_new_stream() {
    let mut decoder = Decoder::new();
    decoder
        .feed(b"id: 3\nretry: 50\ndata: a\n\ndata: lost\n")
        .unwrap();
    assert!(decoder.finish());
    assert_eq!(decoder.last_event_id(), Some("3"));
    assert_eq!(decoder.retry(), Some(50));
    // The new stream may start with a BOM; the id carries over.
    assert_eq!(
        decoder.feed(b"\xEF\xBB\xBFdata: b\n\n").unwrap(),
        vec![ev("b").with_id("3")]
    );
}

// ------------------------------------------------------------------ limits

#[test]
fn line_too_long_without_line_end() {
    let mut decoder = Decoder::with_limits(16, 1024);
    assert_eq!(decoder.feed(b"data: 0123456789").unwrap(), vec![]); // 16 bytes
    assert_eq!(decoder.feed(b"x"), Err(SseError::LineTooLong { limit: 16 }));
    // Poisoned from now on.
    assert_eq!(
        decoder.feed(b"\n\n"),
        Err(SseError::LineTooLong { limit: 16 })
    );
    // finish() resets it.
    decoder.finish();
    assert_eq!(decoder.feed(b"data: ok\n\n").unwrap(), vec![ev("ok")]);
}

#[test]
fn line_too_long_in_one_chunk() {
    let mut decoder = Decoder::with_limits(16, 1024);
    assert_eq!(
        decoder.feed(b"data: 0123456789x\n\n"),
        Err(SseError::LineTooLong { limit: 16 })
    );
    // Exactly at the limit is fine, whatever the chunking.
    let stream = b"data: 0123456789\n\n";
    let mut decoder = Decoder::with_limits(16, 1024);
    assert_eq!(decoder.feed(stream).unwrap(), vec![ev("0123456789")]);
    let mut decoder = Decoder::with_limits(16, 1024);
    let mut events = Vec::new();
    for byte in stream {
        events.extend(decoder.feed(std::slice::from_ref(byte)).unwrap());
    }
    assert_eq!(events, vec![ev("0123456789")]);
}

#[test]
fn comment_lines_count_against_the_line_limit() {
    let mut decoder = Decoder::with_limits(8, 1024);
    assert_eq!(
        decoder.feed(b": a long comment\n"),
        Err(SseError::LineTooLong { limit: 8 })
    );
}

#[test]
fn event_too_large() {
    let mut decoder = Decoder::with_limits(1024, 10);
    // "0123\n01234" is exactly 10 bytes.
    assert_eq!(
        decoder.feed(b"data: 0123\ndata: 01234\n\n").unwrap(),
        vec![ev("0123\n01234")]
    );
    assert_eq!(
        decoder.feed(b"data: 0123\ndata: 012345\n\n"),
        Err(SseError::EventTooLarge { limit: 10 })
    );
    assert_eq!(
        decoder.feed(b"data: x\n\n"),
        Err(SseError::EventTooLarge { limit: 10 })
    );
}

#[test]
fn event_limit_spans_many_short_lines() {
    let mut decoder = Decoder::with_limits(1024, 100);
    let mut err = None;
    for _ in 0..200 {
        if let Err(e) = decoder.feed(b"data: x\n") {
            err = Some(e);
            break;
        }
    }
    assert_eq!(err, Some(SseError::EventTooLarge { limit: 100 }));
}

#[test]
fn error_messages() {
    assert_eq!(
        SseError::LineTooLong { limit: 5 }.to_string(),
        "SSE line longer than 5 bytes"
    );
    assert_eq!(
        SseError::EventTooLarge { limit: 5 }.to_string(),
        "SSE event data larger than 5 bytes"
    );
    assert_eq!(
        SseError::InvalidField { field: "id" }.to_string(),
        "SSE field `id` cannot contain a line break"
    );
}

// ---------------------------------------------------------------- encoding

#[test]
fn encode_wire_form() {
    assert_eq!(encode(&ev("hello")).unwrap(), "data: hello\n\n");
    assert_eq!(encode(&ev("")).unwrap(), "data:\n\n");
    assert_eq!(
        encode(
            &ev("a\nb\r\nc\rd")
                .with_id("42")
                .with_event("update")
                .with_retry(1000)
        )
        .unwrap(),
        "id: 42\nevent: update\nretry: 1000\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    );
    assert_eq!(encode(&ev("a\n")).unwrap(), "data: a\ndata:\n\n");
    assert_eq!(encode(&ev(" lead")).unwrap(), "data:  lead\n\n");
    assert_eq!(encode(&ev("x").with_id("")).unwrap(), "id:\ndata: x\n\n");
    assert_eq!(encode(&ev("x").with_event("")).unwrap(), "data: x\n\n");
}

#[test]
fn encode_into_matches_encode() {
    let events = [
        ev("a\nb").with_id("1").with_event("e").with_retry(5),
        ev(""),
        ev("{}"),
    ];
    let mut buf = BytesMut::from(&b"prefix"[..]);
    let mut expected = String::from("prefix");
    for event in &events {
        encode_into(event, &mut buf).unwrap();
        expected.push_str(&encode(event).unwrap());
    }
    assert_eq!(&buf[..], expected.as_bytes());
}

#[test]
fn encode_rejects_line_breaks_in_id_and_event() {
    for bad in ["a\nb", "a\rb", "a\r\nb", "\n", "trailing\r"] {
        assert_eq!(
            encode(&ev("x").with_id(bad)),
            Err(SseError::InvalidField { field: "id" })
        );
        assert_eq!(
            encode(&ev("x").with_event(bad)),
            Err(SseError::InvalidField { field: "event" })
        );
        let mut buf = BytesMut::new();
        assert_eq!(
            encode_into(&ev("x").with_event(bad), &mut buf),
            Err(SseError::InvalidField { field: "event" })
        );
        assert!(buf.is_empty(), "nothing written on error");
    }
    // NUL would make decoders ignore the id.
    assert_eq!(
        encode(&ev("x").with_id("a\0b")),
        Err(SseError::InvalidField { field: "id" })
    );
    // NUL is representable in an event type.
    assert_eq!(
        decode_both(encode(&ev("x").with_event("a\0b")).unwrap().as_bytes()),
        vec![ev("x").with_event("a\0b")]
    );
}

#[test]
fn encode_decode_with_unicode_and_colons() {
    let event = ev("caf\u{e9}: \u{1F600}\n\n:not a comment")
        .with_id(" spaced id ")
        .with_event("ns:type");
    assert_eq!(decode_both(encode(&event).unwrap().as_bytes()), vec![event]);
}

#[test]
fn comment_wire_form() {
    assert_eq!(comment("keep-alive"), ": keep-alive\n\n");
    assert_eq!(comment(""), ":\n\n");
    assert_eq!(comment("a\nb"), ": a\n: b\n\n");
}

#[test]
fn comment_cannot_inject_fields() {
    for text in [
        "x\ndata: evil",
        "x\rdata: evil",
        "x\r\ndata: evil\n\nid: 666",
        "\ndata: evil\n\n",
        "data: evil",
    ] {
        let wire = comment(text);
        let mut decoder = Decoder::new();
        assert_eq!(decoder.feed(wire.as_bytes()).unwrap(), vec![], "{text:?}");
        assert_eq!(decoder.last_event_id(), None, "{text:?}");
        assert!(!decoder.finish());
        // And it does not disturb surrounding events.
        let mut stream = encode(&ev("before").with_id("1")).unwrap();
        stream.push_str(&wire);
        stream.push_str(&encode(&ev("after")).unwrap());
        assert_eq!(
            decode_both(stream.as_bytes()),
            vec![ev("before").with_id("1"), ev("after").with_id("1")]
        );
    }
}

// ------------------------------------------------------------ property tests

/// Data as the decoder reports it: every line end normalised to LF.
fn normalize_data(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

/// Arbitrary text with plenty of line ends of every kind.
fn text_with_line_ends(max_len: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            6 => any::<char>(),
            1 => Just('\n'),
            1 => Just('\r'),
            1 => Just(' '),
            1 => Just(':'),
        ],
        0..max_len,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn arb_event() -> impl Strategy<Value = Event> {
    (
        prop::option::of("[^\r\n\u{0}]{0,12}"),
        prop::option::of("[^\r\n]{0,12}"),
        text_with_line_ends(40),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(id, event, data, retry)| Event {
            id,
            event,
            data,
            retry,
        })
}

/// The stream item before each event: nothing, or a comment.
fn arb_item() -> impl Strategy<Value = (Option<String>, Event)> {
    (prop::option::of(text_with_line_ends(20)), arb_event())
}

/// Splits `bytes` into chunks whose sizes cycle through `sizes`. A size of 0
/// yields an empty chunk followed by a one-byte chunk, so the split always
/// makes progress.
fn chunks<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let mut size = sizes[i % sizes.len()];
        if size == 0 {
            out.push(&rest[..0]);
            size = 1;
        }
        let size = size.min(rest.len());
        let (head, tail) = rest.split_at(size);
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// encode → arbitrary chunking (and line-end style, BOM, comments) →
    /// decode yields the original events, with data line ends normalised
    /// and the id carried over per WHATWG.
    #[test]
    fn roundtrip_under_arbitrary_chunking(
        items in prop::collection::vec(arb_item(), 0..12),
        sizes in prop::collection::vec(0usize..48, 1..16),
        line_end in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        bom in any::<bool>(),
    ) {
        let mut wire = String::new();
        if bom {
            wire.push('\u{FEFF}');
        }
        let mut expected = Vec::new();
        let mut last_id: Option<String> = None;
        for (comment_text, event) in &items {
            if let Some(text) = comment_text {
                wire.push_str(&comment(text));
            }
            wire.push_str(&encode(event).unwrap());
            if event.id.is_some() {
                last_id.clone_from(&event.id);
            }
            expected.push(Event {
                id: last_id.clone(),
                event: event.event.clone().filter(|e| !e.is_empty()),
                data: normalize_data(&event.data),
                retry: event.retry,
            });
        }
        // The encoder only ever writes LF line ends (CRs in data split
        // lines), so any line-end style can be substituted.
        prop_assert!(!wire.contains('\r'));
        let wire = wire.replace('\n', line_end);

        let mut decoder = Decoder::new();
        let mut decoded = Vec::new();
        for chunk in chunks(wire.as_bytes(), &sizes) {
            decoded.extend(decoder.feed(chunk).unwrap());
        }
        prop_assert_eq!(&decoded, &expected);
        prop_assert!(!decoder.finish());
        prop_assert_eq!(decoder.last_event_id(), last_id.as_deref());
        let last_retry = items.iter().rev().find_map(|(_, e)| e.retry);
        prop_assert_eq!(decoder.retry(), last_retry);
    }

    /// For arbitrary bytes, the decoded events, the finish() result and
    /// the decoder state do not depend on how the input is chunked.
    #[test]
    fn chunking_invariance_on_arbitrary_bytes(
        parts in prop::collection::vec(
            prop_oneof![
                4 => prop::collection::vec(any::<u8>(), 0..8),
                1 => Just(b"\r".to_vec()),
                1 => Just(b"\n".to_vec()),
                1 => Just(b"\r\n".to_vec()),
                1 => Just(b"\xEF\xBB\xBF".to_vec()),
                1 => Just(b"data".to_vec()),
                1 => Just(b"data: ".to_vec()),
                1 => Just(b"id: ".to_vec()),
                1 => Just(b"event:".to_vec()),
                1 => Just(b"retry: 12".to_vec()),
                1 => Just(b":".to_vec()),
            ],
            0..40,
        ),
        sizes in prop::collection::vec(0usize..24, 1..8),
    ) {
        let input: Vec<u8> = parts.concat();

        let mut whole = Decoder::new();
        let expected = whole.feed(&input).unwrap();

        let mut chunked = Decoder::new();
        let mut decoded = Vec::new();
        for chunk in chunks(&input, &sizes) {
            decoded.extend(chunked.feed(chunk).unwrap());
        }
        prop_assert_eq!(&decoded, &expected);
        prop_assert_eq!(chunked.last_event_id(), whole.last_event_id());
        prop_assert_eq!(chunked.retry(), whole.retry());
        prop_assert_eq!(chunked.finish(), whole.finish());
    }

    /// Limits are enforced the same way whatever the chunking.
    #[test]
    fn limits_independent_of_chunking(
        events in prop::collection::vec(arb_event(), 0..6),
        sizes in prop::collection::vec(1usize..32, 1..8),
        max_line in 0usize..64,
        max_event in 0usize..64,
    ) {
        let mut wire = String::new();
        for event in &events {
            wire.push_str(&encode(event).unwrap());
        }
        let mut whole = Decoder::with_limits(max_line, max_event);
        let expected = whole.feed(wire.as_bytes());

        let mut chunked = Decoder::with_limits(max_line, max_event);
        let mut decoded = Vec::new();
        let mut result = Ok(());
        for chunk in chunks(wire.as_bytes(), &sizes) {
            match chunked.feed(chunk) {
                Ok(evs) => decoded.extend(evs),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        match expected {
            Ok(evs) => {
                prop_assert_eq!(result, Ok(()));
                prop_assert_eq!(decoded, evs);
            }
            Err(e) => prop_assert_eq!(result, Err(e)),
        }
    }
}
