//! PgBouncer's connection strings (`[databases]` and `[users]` values): `key=value` pairs
//! separated by spaces; a value may be in single quotes (`''` is one quote, spaces kept); an
//! empty value is an error, as in PgBouncer.

/// The pairs of `text`, in order; Err says what is wrong.
pub(crate) fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..end];
        let after = rest[end..].trim_start();
        let Some(after) = after.strip_prefix('=') else {
            return Err(format!("expected `=` after {key:?}"));
        };
        if key.is_empty() {
            return Err("a parameter name is missing before `=`".to_string());
        }
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('\'') {
            unquote(quoted).ok_or_else(|| format!("unterminated quoted value of {key:?}"))?
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        if value.is_empty() {
            return Err(format!("empty value for {key:?}"));
        }
        pairs.push((key.to_ascii_lowercase(), value));
        rest = next.trim_start();
    }
    Ok(pairs)
}

/// The value up to the closing quote (`''` is a quote), and the text after it.
fn unquote(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\'' {
            value.push(c);
        } else if text[i + 1..].starts_with('\'') {
            value.push('\'');
            chars.next();
        } else {
            return Some((value, &text[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn pairs_and_quotes() {
        assert_eq!(
            parse("host=a port=5433"),
            Ok(pairs(&[("host", "a"), ("port", "5433")]))
        );
        assert_eq!(
            parse("connect_query='SET x = ''y''' dbname = z"),
            Ok(pairs(&[("connect_query", "SET x = 'y'"), ("dbname", "z")]))
        );
        assert_eq!(parse(""), Ok(vec![]));
        assert!(parse("host=").is_err());
        assert!(parse("host").is_err());
        assert!(parse("q='open").is_err());
        assert!(parse("=x").is_err());
    }
}
