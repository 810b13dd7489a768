//! A list result (`tools/list`, ...) read in one pass with the scanner's lexer: where each item
//! of `result.<key>` lies, and `result.nextCursor`. Federation takes a client page's items out of
//! an upstream page without building a tree of the whole list; only the items taken are parsed.
//! Duplicate keys at `result` (two `tools` arrays, two cursors) are refused, as everywhere the
//! gateway decides on what it read.

use std::ops::Range;

use super::lex::{Cursor, Lex};

/// Where the items of one list page are, and its cursor.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Each item's JSON text, as a range of the message.
    pub items: Vec<Range<usize>>,
    /// `result.nextCursor` when it is a string.
    pub next_cursor: Option<String>,
}

/// Why a list result cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ListError {
    /// Not JSON, or deeper than the limit.
    Invalid(String),
    /// No `result` object (an error response, or not a response).
    NoResult,
    /// `result.<key>` is there but is not an array.
    NotAList,
    /// A key of the message or its `result` appears twice.
    DuplicateKey(&'static str),
}

/// Reads `result.<key>` (item ranges) and `result.nextCursor` of a JSON-RPC response message.
/// An absent `result.<key>` is an empty page.
pub fn list_page(msg: &str, key: &str, max_depth: u32) -> Result<ListPage, ListError> {
    let mut cur = Cursor::new(msg, max_depth);
    let invalid = |cur: &mut Cursor<'_>| {
        let e = cur.take_fatal();
        ListError::Invalid(format!("{e}"))
    };
    let mut page = None;
    let walked = walk_object(&mut cur, 1, |cur, k| {
        if k == "result" {
            if page.is_some() {
                cur.skip_value(1)?;
                return Ok(Some(ListError::DuplicateKey("result")));
            }
            cur.ws();
            if cur.peek() != Some(b'{') {
                cur.skip_value(1)?;
                return Ok(Some(ListError::NoResult));
            }
            let mut p = ListPage::default();
            let mut seen_items = false;
            let mut seen_cursor = false;
            let inner = walk_object(cur, 2, |cur, k| {
                if k == key {
                    if std::mem::replace(&mut seen_items, true) {
                        cur.skip_value(2)?;
                        return Ok(Some(ListError::DuplicateKey("result.<list>")));
                    }
                    return items(cur, &mut p.items);
                }
                if k == "nextCursor" {
                    if std::mem::replace(&mut seen_cursor, true) {
                        cur.skip_value(2)?;
                        return Ok(Some(ListError::DuplicateKey("result.nextCursor")));
                    }
                    cur.ws();
                    if cur.peek() == Some(b'"') {
                        let t = cur.string_tok()?;
                        p.next_cursor = Some(cur.decode(t).into_owned());
                        return Ok(None);
                    }
                }
                cur.skip_value(2)?;
                Ok(None)
            })?;
            if let Some(e) = inner {
                return Ok(Some(e));
            }
            page = Some(p);
            return Ok(None);
        }
        cur.skip_value(1)?;
        Ok(None)
    });
    match walked {
        Err(_) => Err(invalid(&mut cur)),
        Ok(Some(e)) => Err(e),
        Ok(None) => {
            cur.ws();
            if cur.i != cur.b.len() {
                return Err(ListError::Invalid(
                    "trailing bytes after the message".into(),
                ));
            }
            page.ok_or(ListError::NoResult)
        }
    }
}

/// The items of the array at the cursor (or `NotAList`).
fn items(cur: &mut Cursor<'_>, out: &mut Vec<Range<usize>>) -> Lex<Option<ListError>> {
    cur.ws();
    if cur.peek() != Some(b'[') {
        cur.skip_value(2)?;
        return Ok(Some(ListError::NotAList));
    }
    cur.check_depth(3)?;
    cur.i += 1;
    cur.ws();
    if cur.peek() == Some(b']') {
        cur.i += 1;
        return Ok(None);
    }
    loop {
        cur.ws();
        let start = cur.i;
        cur.skip_value(3)?;
        out.push(start..cur.i);
        cur.ws();
        match cur.peek() {
            Some(b',') => cur.i += 1,
            Some(b']') => {
                cur.i += 1;
                return Ok(None);
            }
            _ => return Err(cur.fail_unexpected("expected ',' or ']'")),
        }
    }
}

/// Walks the object at the cursor (after whitespace, on `{`), handing each member's decoded key
/// to `member`, which consumes the value; the first `Some` it returns ends the walk's meaning
/// (the rest is still lexed). Duplicate keys are the member function's business.
fn walk_object<'a>(
    cur: &mut Cursor<'a>,
    depth: u32,
    mut member: impl FnMut(&mut Cursor<'a>, &str) -> Lex<Option<ListError>>,
) -> Lex<Option<ListError>> {
    cur.ws();
    if cur.peek() != Some(b'{') {
        return Err(cur.fail_unexpected("expected an object"));
    }
    cur.check_depth(depth)?;
    cur.i += 1;
    cur.ws();
    if cur.peek() == Some(b'}') {
        cur.i += 1;
        return Ok(None);
    }
    let mut first = None;
    loop {
        let k = cur.key()?;
        let name = cur.decode(k);
        let got = member(cur, &name)?;
        if first.is_none() {
            first = got;
        }
        cur.ws();
        match cur.peek() {
            Some(b',') => cur.i += 1,
            Some(b'}') => {
                cur.i += 1;
                return Ok(first);
            }
            _ => return Err(cur.fail_unexpected("expected ',' or '}'")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_and_cursor_in_one_pass() {
        let msg = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"}, {"name":"b","x":[1,{"y":"]"}]}],"nextCursor":"c\u0031"}}"#;
        let p = list_page(msg, "tools", 64).unwrap();
        let texts: Vec<&str> = p.items.iter().map(|r| &msg[r.clone()]).collect();
        assert_eq!(
            texts,
            [r#"{"name":"a"}"#, r#"{"name":"b","x":[1,{"y":"]"}]}"#]
        );
        assert_eq!(p.next_cursor.as_deref(), Some("c1"));
        // Items agree with a full parser's.
        let v: serde_json::Value = serde_json::from_str(msg).unwrap();
        for (r, want) in p.items.iter().zip(v["result"]["tools"].as_array().unwrap()) {
            let got: serde_json::Value = serde_json::from_str(&msg[r.clone()]).unwrap();
            assert_eq!(&got, want);
        }
    }

    #[test]
    fn absent_list_is_empty_and_bad_shapes_are_refused() {
        let p = list_page(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, "tools", 64).unwrap();
        assert_eq!(p, ListPage::default());
        let e = |m: &str| list_page(m, "tools", 64).unwrap_err();
        assert_eq!(e(r#"{"id":1,"error":{"code":1}}"#), ListError::NoResult);
        assert_eq!(e(r#"{"result":{"tools":{}}}"#), ListError::NotAList);
        assert_eq!(
            e(r#"{"result":{"tools":[],"tools":[{"name":"x"}]}}"#),
            ListError::DuplicateKey("result.<list>")
        );
        assert_eq!(
            e(r#"{"result":{"nextCursor":"a","nextCursor":"b"}}"#),
            ListError::DuplicateKey("result.nextCursor")
        );
        assert_eq!(
            e(r#"{"result":{},"result":{}}"#),
            ListError::DuplicateKey("result")
        );
        assert!(matches!(
            e(r#"{"result":{"tools":[1,]}}"#),
            ListError::Invalid(_)
        ));
        assert!(matches!(e(r#"{"result":{}} x"#), ListError::Invalid(_)));
    }
}
