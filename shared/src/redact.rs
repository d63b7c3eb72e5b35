//! Removing credentials from text that may reach a log line or a response,
//! and keeping such text readable: an error with the causes its own text
//! leaves out, cut to a length.

/// Replaces the password of every `scheme://user:password@host` in `text`
/// with `***`.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '/')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `e` and each cause beneath it whose text it does not already say,
/// joined by `: ` (a signer's "failed to load signing credential" hides
/// what the token endpoint answered).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// At most `max` characters of `text`, `…` marking a cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_hidden() {
        assert_eq!(
            redact_urls("error connecting to postgres://admin:s3cr@t@db:5432/x now"),
            "error connecting to postgres://admin:***@db:5432/x now"
        );
        assert_eq!(redact_urls("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_urls("no url here"), "no url here");
    }
}
