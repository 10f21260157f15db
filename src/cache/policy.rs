//! Cacheability and validation policy: pure functions over request/response heads.
//!
//! The storability checks are the original chacha's (`shouldCache` in
//! `handle_proxy_default.go`), which README sums up as "RFC 9111, except: always
//! validating, and only URLs matching a rule are cached". On top of them chacha-rs needs
//! a validator to store (it revalidates every hit, so an entry without one could never be
//! served) and merges 304 header updates as RFC 9111 §4.3.4 asks.

mod date;
mod headers;
mod validate;

pub use date::parse_http_date;
pub use headers::{merge_304, served_after_304, stored_headers};
pub use validate::{client_conditional_matches, conditional_headers, Validators};

use crate::config::Rule;
use crate::http::{Headers, RequestHead, ResponseHead};

/// Why a request or response may not be stored. [`NotStorable::detail`] is the token put in
/// `Cache-Status: ...; detail=` (RFC 9211 §2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    /// The method is not GET.
    Method,

    /// The response status is not 200.
    Status,
    /// `Cache-Control: no-store` in the request.
    NoStoreRequest,
    /// `Cache-Control: no-store` in the response.
    NoStoreResponse,
    /// `Cache-Control: private` in the request or the response.
    Private,
    /// `Pragma: no-cache` in the request.
    PragmaNoCache,
    /// The response has `Vary`.
    Vary,
    /// The request has `Authorization` and nothing allows sharing the response.
    Authorization,
    /// The response has neither `ETag` nor `Last-Modified`.
    NoValidator,
    /// The body exceeded what the cache accepts (decided by the caller while filling).
    TooLarge,
}

impl NotStorable {
    /// A short sf-token (RFC 8941 §3.3.4) for `Cache-Status` `detail=`.
    pub fn detail(&self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::NoStoreRequest => "request-no-store",
            NotStorable::NoStoreResponse => "no-store",
            NotStorable::Private => "private",
            NotStorable::PragmaNoCache => "pragma",
            NotStorable::Vary => "vary",
            NotStorable::Authorization => "authorization",
            NotStorable::NoValidator => "no-validator",
            NotStorable::TooLarge => "too-large",
        }
    }
}

/// Whether the request allows its response to be stored (the original's request-side
/// checks). Method first, so a pass-through of a non-GET always reports `method`.
pub fn request_storable(req: &RequestHead, _rule: Option<&Rule>) -> Result<(), NotStorable> {
    // The original caches GET only (HEAD responses have no body to store).
    if req.method != "GET" {
        return Err(NotStorable::Method);
    }
    // RFC 9111 §5.2.1.5: no-store in the request forbids storing the response. The original
    // also refuses `private` in the request, which is harmless and kept.
    if has_directive(&req.headers, "cache-control", "no-store") {
        return Err(NotStorable::NoStoreRequest);
    }
    if has_directive(&req.headers, "cache-control", "private") {
        return Err(NotStorable::Private);
    }
    // RFC 9111 §5.4: `Pragma: no-cache` (HTTP/1.0). The original tests for the substring.
    if req
        .headers
        .get_all("pragma")
        .any(|v| contains_ignore_case(v, b"no-cache"))
    {
        return Err(NotStorable::PragmaNoCache);
    }
    Ok(())
}

/// Whether `resp` to `req` may be stored. Includes [`request_storable`], so this one call
/// decides.
pub fn response_storable(
    req: &RequestHead,
    resp: &ResponseHead,
    rule: Option<&Rule>,
) -> Result<(), NotStorable> {
    request_storable(req, rule)?;
    // The original stores 200 only (RFC 9111 §3 allows more; keep it simple and safe).
    if resp.status != 200 {
        return Err(NotStorable::Status);
    }
    // RFC 9111 §5.2.2.5 and §5.2.2.7: no-store, and private in a shared cache.
    if has_directive(&resp.headers, "cache-control", "no-store") {
        return Err(NotStorable::NoStoreResponse);
    }
    if has_directive(&resp.headers, "cache-control", "private") {
        return Err(NotStorable::Private);
    }
    // RFC 9111 §4.1 would need the varying request fields in the key; like the original,
    // any Vary (even an empty one) means "not stored".
    if resp.headers.contains("vary") {
        return Err(NotStorable::Vary);
    }
    // RFC 9111 §3.5: a shared cache stores a response to an authorized request only if the
    // response explicitly allows it; a rule can waive this (ignore-authorization-header).
    let authorized = req
        .headers
        .get("authorization")
        .is_some_and(|v| !v.is_empty());
    let allowed = ["public", "must-revalidate", "s-maxage"]
        .iter()
        .any(|d| has_directive(&resp.headers, "cache-control", d));
    let waived = rule.is_some_and(|r| r.ignore_authorization_header);
    if authorized && !allowed && !waived {
        return Err(NotStorable::Authorization);
    }
    // Every hit is revalidated, so an entry needs a validator to ever be served.
    if Validators::from_headers(&resp.headers).is_empty() {
        return Err(NotStorable::NoValidator);
    }
    Ok(())
}

/// Whether the comma-separated `field` lists hold `directive` (case-insensitive; its
/// `=value` ignored). Commas inside quoted strings do not split (RFC 9110 §5.6.4), so
/// `no-cache="a, private"` does not contain `private`.
fn has_directive(headers: &Headers, field: &str, directive: &str) -> bool {
    headers.get_all(field).any(|value| {
        split_list(value).any(|item| {
            let name = item.split(|b| *b == b'=').next().unwrap_or(item);
            trim(name).eq_ignore_ascii_case(directive.as_bytes())
        })
    })
}

/// Elements of one list-valued field, split on commas outside quoted strings.
fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = value;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, &b) in rest.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let item = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or(&[]);
        Some(item)
    })
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &v[start..end]
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether the origin's `status` to a request whose key is `key_exact` (see
/// [`crate::cache::key::key_is_exact`]) removes the stored entry: 404/410 say the
/// resource is gone (RFC 9110 §15.5.5, §15.5.11), but only for the URL and credentials
/// asked. When the key leaves part of the request out, the answer is relayed and the entry
/// kept: an expired signature or a client without access must not evict what others share.
pub fn should_drop_on_status(status: u16, key_exact: bool) -> bool {
    key_exact && matches!(status, 404 | 410)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Version;

    pub(super) fn headers(fields: &[(&str, &str)]) -> Headers {
        Headers {
            fields: fields
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn request(method: &str, fields: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: method.to_string(),
            target: "http://h/x".to_string(),
            version: Version::Http11,
            headers: headers(fields),
        }
    }

    fn response(status: u16, fields: &[(&str, &str)]) -> ResponseHead {
        ResponseHead {
            version: Version::Http11,
            status,
            reason: String::new(),
            headers: headers(fields),
        }
    }

    fn rule(ignore_authorization_header: bool) -> Rule {
        let mut rule = Rule::new(regex::Regex::new(".*").unwrap());
        rule.ignore_authorization_header = ignore_authorization_header;
        rule
    }

    pub(super) type Fields = &'static [(&'static str, &'static str)];
    /// (name, method, request fields, status, response fields, rule, expected)
    type StorabilityCase<'r> = (
        &'static str,
        &'static str,
        Fields,
        u16,
        Fields,
        Option<&'r Rule>,
        Result<(), NotStorable>,
    );

    #[test]
    fn storability_table() {
        use NotStorable::*;
        const ETAG: (&str, &str) = ("ETag", "\"v1\"");
        let plain = rule(false);
        let waiving = rule(true);
        #[rustfmt::skip]
        let cases: &[StorabilityCase] = &[
            ("storable", "GET", &[], 200, &[ETAG], Some(&plain), Ok(())),
            ("last-modified is a validator", "GET", &[], 200,
                &[("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")], Some(&plain), Ok(())),
            ("no validator", "GET", &[], 200, &[], Some(&plain), Err(NoValidator)),
            ("empty etag is none", "GET", &[], 200, &[("ETag", "")], Some(&plain), Err(NoValidator)),
            ("method HEAD", "HEAD", &[], 200, &[ETAG], Some(&plain), Err(Method)),
            ("method POST", "POST", &[], 200, &[ETAG], Some(&plain), Err(Method)),
            ("method before rule", "POST", &[], 200, &[ETAG], None, Err(Method)),
            ("no rule: any URL may be cached", "GET", &[], 200, &[ETAG], None, Ok(())),
            ("status 206", "GET", &[], 206, &[ETAG], Some(&plain), Err(Status)),
            ("status 304", "GET", &[], 304, &[ETAG], Some(&plain), Err(Status)),
            ("status 404", "GET", &[], 404, &[ETAG], Some(&plain), Err(Status)),
            ("request no-store", "GET", &[("Cache-Control", "max-age=0, No-Store")], 200, &[ETAG],
                Some(&plain), Err(NoStoreRequest)),
            ("request private", "GET", &[("Cache-Control", "private")], 200, &[ETAG],
                Some(&plain), Err(Private)),
            ("request no-cache is storable", "GET", &[("Cache-Control", "no-cache")], 200, &[ETAG],
                Some(&plain), Ok(())),
            ("pragma", "GET", &[("Pragma", "no-cache")], 200, &[ETAG], Some(&plain),
                Err(PragmaNoCache)),
            ("pragma other", "GET", &[("Pragma", "x-foo")], 200, &[ETAG], Some(&plain), Ok(())),
            ("response no-store", "GET", &[], 200, &[ETAG, ("Cache-Control", "no-store")],
                Some(&plain), Err(NoStoreResponse)),
            ("response no-store in second line", "GET", &[], 200,
                &[ETAG, ("Cache-Control", "max-age=60"), ("cache-control", "no-store")],
                Some(&plain), Err(NoStoreResponse)),
            ("response private", "GET", &[], 200, &[ETAG, ("Cache-Control", "private=\"x\"")],
                Some(&plain), Err(Private)),
            ("private inside a quoted string", "GET", &[], 200,
                &[ETAG, ("Cache-Control", "no-cache=\"a, private\"")], Some(&plain), Ok(())),
            ("response vary", "GET", &[], 200, &[ETAG, ("Vary", "Accept-Encoding")],
                Some(&plain), Err(Vary)),
            ("response empty vary", "GET", &[], 200, &[ETAG, ("Vary", "")], Some(&plain),
                Err(Vary)),
            ("authorization", "GET", &[("Authorization", "Bearer t")], 200, &[ETAG],
                Some(&plain), Err(Authorization)),
            ("authorization + max-age only", "GET", &[("Authorization", "Bearer t")], 200,
                &[ETAG, ("Cache-Control", "max-age=60")], Some(&plain), Err(Authorization)),
            ("authorization + public", "GET", &[("Authorization", "Bearer t")], 200,
                &[ETAG, ("Cache-Control", "Public")], Some(&plain), Ok(())),
            ("authorization + must-revalidate", "GET", &[("Authorization", "Bearer t")], 200,
                &[ETAG, ("Cache-Control", "max-age=0, must-revalidate")], Some(&plain), Ok(())),
            ("authorization + s-maxage", "GET", &[("Authorization", "Bearer t")], 200,
                &[ETAG, ("Cache-Control", "s-maxage=60")], Some(&plain), Ok(())),
            ("authorization + rule waiver", "GET", &[("Authorization", "Bearer t")], 200, &[ETAG],
                Some(&waiving), Ok(())),
            ("empty authorization", "GET", &[("Authorization", "")], 200, &[ETAG], Some(&plain),
                Ok(())),
            ("waiver does not waive no-store", "GET", &[("Authorization", "Bearer t")], 200,
                &[ETAG, ("Cache-Control", "no-store")], Some(&waiving), Err(NoStoreResponse)),
        ];
        for (name, method, req, status, resp, rule, want) in cases {
            let req = request(method, req);
            let got = response_storable(&req, &response(*status, resp), *rule);
            assert_eq!(got, *want, "{name}");
            // The request-side verdict agrees for every request-side reason.
            if let Err(reason @ (Method | NoStoreRequest | PragmaNoCache)) = want {
                assert_eq!(request_storable(&req, *rule), Err(*reason), "{name}");
            }
        }
    }

    #[test]
    fn drop_on_gone_statuses_of_exact_keys_only() {
        let cases = [
            (404, true, true),
            (410, true, true),
            (404, false, false),
            (410, false, false),
            (403, true, false),
            (200, true, false),
            (304, true, false),
            (500, true, false),
        ];
        for (status, exact, want) in cases {
            assert_eq!(
                should_drop_on_status(status, exact),
                want,
                "{status} {exact}"
            );
        }
    }
}
