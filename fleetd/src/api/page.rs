//! Page tokens and paging (fleet-reference.md §4.5).
//!
//! A token is the URL-safe base64, with padding, of four bytes: the page size
//! (`token_limit`) and the page number (from 1), each a little-endian `u16`.
//! Limit 100, page 2 is `ZAACAA==`. A token is issued whenever a page is
//! full, even when nothing follows, and the page after the last is `{}`.
//!
//! The messages of the 400s are the original's (Go's `encoding/base64` and
//! `encoding/binary` wording for undecodable tokens).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;

use super::error::ApiError;

/// The query parameter carrying the token.
pub const PARAM: &str = "nextPageToken";

/// Which page of which size a listing answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageToken {
    /// Items per page; must equal the server's `token_limit`.
    pub limit: u16,
    /// Page number, from 1.
    pub page: u16,
}

impl PageToken {
    /// The first page of size `limit`.
    pub fn first(limit: u16) -> Self {
        PageToken { limit, page: 1 }
    }

    /// The token's wire form.
    pub fn encode(self) -> String {
        let [l0, l1] = self.limit.to_le_bytes();
        let [p0, p1] = self.page.to_le_bytes();
        URL_SAFE.encode([l0, l1, p0, p1])
    }

    /// Parses a token, as the original did: extra bytes after the first four
    /// are ignored.
    pub fn decode(text: &str) -> Result<Self, ApiError> {
        let bytes = URL_SAFE
            .decode(text)
            .map_err(|e| ApiError::bad_request(base64_message(&e)))?;
        match bytes.as_slice() {
            [] => Err(ApiError::bad_request("EOF")),
            [l0, l1, p0, p1, ..] => Ok(PageToken {
                limit: u16::from_le_bytes([*l0, *l1]),
                page: u16::from_le_bytes([*p0, *p1]),
            }),
            _ => Err(ApiError::bad_request("unexpected EOF")),
        }
    }

    /// The token a request asks for: the first page when it names none, an
    /// error when it names several, one that does not decode, one for
    /// another page size, or page 0. `params` are the decoded query pairs.
    pub fn from_query(params: &[(String, String)], limit: u16) -> Result<Self, ApiError> {
        let mut values = params.iter().filter(|(k, _)| k == PARAM).map(|(_, v)| v);
        let Some(value) = values.next() else {
            return Ok(PageToken::first(limit));
        };
        if values.next().is_some() {
            return Err(ApiError::bad_request("too many values for page token"));
        }
        let token = PageToken::decode(value)?;
        if token.limit != limit {
            return Err(ApiError::bad_request(format!(
                "token limit must be {limit}"
            )));
        }
        if token.page == 0 {
            return Err(ApiError::bad_request(
                "token page must be greater than zero",
            ));
        }
        Ok(token)
    }

    /// This token's slice of `all`, and the token of the next page when this
    /// one is full (none past page 65535).
    pub fn slice<T: Clone>(self, all: &[T]) -> (Vec<T>, Option<String>) {
        let limit = usize::from(self.limit);
        let start = usize::from(self.page.saturating_sub(1)) * limit;
        let stop = usize::from(self.page) * limit;
        if start >= all.len() {
            return (Vec::new(), None);
        }
        let next = if stop <= all.len() {
            self.page
                .checked_add(1)
                .map(|page| PageToken { page, ..self }.encode())
        } else {
            None
        };
        let items = all[start..stop.min(all.len())].to_vec();
        (items, next)
    }
}

/// Go's wording for bad base64 (`illegal base64 data at input byte N`).
fn base64_message(err: &base64::DecodeError) -> String {
    let offset = match *err {
        base64::DecodeError::InvalidByte(offset, _)
        | base64::DecodeError::InvalidLastSymbol(offset, _) => offset,
        base64::DecodeError::InvalidLength(len) => len,
        base64::DecodeError::InvalidPadding => {
            return "illegal base64 data: bad padding".to_owned();
        }
    };
    format!("illegal base64 data at input byte {offset}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn err(r: Result<PageToken, ApiError>) -> String {
        r.expect_err("the token must be refused").message
    }

    #[test]
    fn token_wire_format() {
        assert_eq!(
            PageToken {
                limit: 100,
                page: 2
            }
            .encode(),
            "ZAACAA=="
        );
        assert_eq!(
            PageToken::decode("ZAACAA==").unwrap(),
            PageToken {
                limit: 100,
                page: 2
            }
        );
        // Extra bytes are ignored, as Go's binary.Read did.
        assert_eq!(
            PageToken::decode(&URL_SAFE.encode([100, 0, 3, 0, 9])).unwrap(),
            PageToken {
                limit: 100,
                page: 3
            }
        );
    }

    #[test]
    fn bad_tokens() {
        assert_eq!(
            err(PageToken::from_query(&q(&[(PARAM, "EwBMLg==")]), 100)),
            "token limit must be 100"
        );
        let page0 = PageToken {
            limit: 100,
            page: 0,
        }
        .encode();
        assert_eq!(
            err(PageToken::from_query(&q(&[(PARAM, &page0)]), 100)),
            "token page must be greater than zero"
        );
        assert_eq!(
            err(PageToken::from_query(
                &q(&[(PARAM, "ZAACAA=="), (PARAM, "ZAACAA==")]),
                100
            )),
            "too many values for page token"
        );
        assert_eq!(
            err(PageToken::from_query(&q(&[(PARAM, "!!!!")]), 100)),
            "illegal base64 data at input byte 0"
        );
        // Padding is required, as with Go's base64.URLEncoding.
        assert!(PageToken::from_query(&q(&[(PARAM, "ZAACAA")]), 100).is_err());
        assert_eq!(err(PageToken::from_query(&q(&[(PARAM, "")]), 100)), "EOF");
        assert_eq!(
            err(PageToken::from_query(&q(&[(PARAM, "ZAA=")]), 100)),
            "unexpected EOF"
        );
    }

    #[test]
    fn no_token_is_the_first_page_and_other_params_are_ignored() {
        assert_eq!(
            PageToken::from_query(&q(&[("alt", "json")]), 7).unwrap(),
            PageToken { limit: 7, page: 1 }
        );
    }

    #[test]
    fn slicing() {
        let t = PageToken::first(2);
        assert_eq!(
            t.slice(&[1, 2, 3]),
            (vec![1, 2], Some(PageToken { limit: 2, page: 2 }.encode()))
        );
        let t2 = PageToken { limit: 2, page: 2 };
        assert_eq!(t2.slice(&[1, 2, 3]), (vec![3], None));
        // A full last page still issues a token; the next page is empty.
        assert_eq!(
            t2.slice(&[1, 2, 3, 4]),
            (vec![3, 4], Some(PageToken { limit: 2, page: 3 }.encode()))
        );
        assert_eq!(
            PageToken { limit: 2, page: 3 }.slice(&[1, 2, 3, 4]),
            (vec![], None)
        );
        assert_eq!(t.slice(&Vec::<u8>::new()), (vec![], None));
        // No overflow at the last page number.
        let last = PageToken {
            limit: 1,
            page: u16::MAX,
        };
        assert_eq!(
            last.slice(&vec![0u8; usize::from(u16::MAX)]),
            (vec![0], None)
        );
    }
}
