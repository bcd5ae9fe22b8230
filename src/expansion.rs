//! Kubernetes' `$(VAR)` expansion, modelled exactly.
//!
//! The kubelet expands `$(NAME)` in a container's `command`, `args` and
//! `env[].value`: `$$` becomes `$`, a reference it cannot resolve stays verbatim,
//! an unterminated `$(` stays verbatim, and `$` before any other character is
//! kept with that character. Anything else about `$` (shell `$VAR`, `${VAR}`) is
//! not Kubernetes' business and passes through untouched.

/// One piece of an input string as the kubelet reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Bytes copied to the output as they are (after `$$` unescaping).
    Literal(&'a str),
    /// A `$(name)` reference; `start` is the byte offset of its `$`.
    Reference { name: &'a str, start: usize },
}

/// Splits `input` into the pieces the kubelet's expansion sees, in order.
pub fn pieces(input: &str) -> Vec<Piece<'_>> {
    let bytes = input.as_bytes();
    let mut out = Vec::new();
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            push_literal(&mut out, input, checkpoint, cursor);
            match bytes[cursor + 1] {
                // `$$`: an escaped `$`; the second one is emitted, the pair consumed.
                b'$' => {
                    push_literal(&mut out, input, cursor + 1, cursor + 2);
                    cursor += 2;
                }
                b'(' => match bytes[cursor + 2..].iter().position(|&b| b == b')') {
                    Some(len) => {
                        let name = &input[cursor + 2..cursor + 2 + len];
                        out.push(Piece::Reference { name, start: cursor });
                        cursor += 3 + len;
                    }
                    // Unterminated: `$(` is kept and scanning resumes after it.
                    None => {
                        push_literal(&mut out, input, cursor, cursor + 2);
                        cursor += 2;
                    }
                },
                // `$x`: kept verbatim; x (one byte, maybe part of a wider char) is consumed.
                _ => {
                    let end = next_char_boundary(input, cursor + 1);
                    push_literal(&mut out, input, cursor, end);
                    cursor = end;
                }
            }
            checkpoint = cursor;
        } else {
            cursor += 1;
        }
    }
    push_literal(&mut out, input, checkpoint, bytes.len());
    out
}

fn push_literal<'a>(out: &mut Vec<Piece<'a>>, input: &'a str, from: usize, to: usize) {
    if from < to {
        out.push(Piece::Literal(&input[from..to]));
    }
}

fn next_char_boundary(s: &str, mut i: usize) -> usize {
    i += 1;
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i.min(s.len())
}

/// The `$(name)` references the kubelet will try to resolve in `input`.
pub fn references(input: &str) -> impl Iterator<Item = (&str, usize)> {
    // Fast path: most strings have no `$` at all.
    let pieces = if input.contains('$') { pieces(input) } else { Vec::new() };
    pieces.into_iter().filter_map(|p| match p {
        Piece::Reference { name, start } => Some((name, start)),
        Piece::Literal(_) => None,
    })
}

/// Expands `input` as the kubelet does; `lookup` returns a variable's value, or
/// `None` to leave the reference verbatim.
pub fn expand<'a>(input: &'a str, lookup: impl FnMut(&str) -> Option<&'a str>) -> String {
    expand_bounded(input, lookup, usize::MAX).unwrap_or_default()
}

/// [`expand`], giving up (`None`) once the result would pass `limit` bytes:
/// values that reference earlier values can double at every step.
pub fn expand_bounded<'a>(
    input: &'a str,
    mut lookup: impl FnMut(&str) -> Option<&'a str>,
    limit: usize,
) -> Option<String> {
    if !input.contains('$') {
        return (input.len() <= limit).then(|| input.to_owned());
    }
    let mut out = String::with_capacity(input.len().min(limit));
    for piece in pieces(input) {
        let (a, b, c) = match piece {
            Piece::Literal(s) => (s, "", ""),
            Piece::Reference { name, .. } => match lookup(name) {
                Some(v) => (v, "", ""),
                None => ("$(", name, ")"),
            },
        };
        if out.len() + a.len() + b.len() + c.len() > limit {
            return None;
        }
        out.push_str(a);
        out.push_str(b);
        out.push_str(c);
    }
    Some(out)
}

/// Shell-style references (`$NAME`, `${NAME}`) that the kubelet leaves alone, as
/// (text, byte offset). `$$NAME` is the kubelet's escape for a literal `$` and
/// still yields `$NAME` after expansion, so it counts too.
pub fn shell_references(input: &str) -> Vec<(&str, usize)> {
    let bytes = input.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        let start = i;
        let mut j = i + 1;
        let braced = bytes.get(j) == Some(&b'{');
        if braced {
            j += 1;
        }
        let name_start = j;
        while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
            j += 1;
        }
        let is_name = j > name_start && !bytes[name_start].is_ascii_digit();
        if is_name && (!braced || bytes.get(j) == Some(&b'}')) {
            let end = if braced { j + 1 } else { j };
            found.push((&input[start..end], start));
            i = end;
        } else {
            i += 1;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<&'static str> {
        match name {
            "NODE_NAME" => Some("node-a"),
            "EMPTY" => Some(""),
            _ => None,
        }
    }

    #[test]
    fn expands_like_the_kubelet() {
        let cases = [
            ("plain", "plain"),
            ("$(NODE_NAME)", "node-a"),
            ("--hostname=$(NODE_NAME)-ts", "--hostname=node-a-ts"),
            ("$(MISSING)", "$(MISSING)"),
            ("$$(NODE_NAME)", "$(NODE_NAME)"),
            ("$$$(NODE_NAME)", "$node-a"),
            ("$$$$", "$$"),
            ("$(NODE_NAME", "$(NODE_NAME"),
            ("$(", "$("),
            ("$", "$"),
            ("a$", "a$"),
            ("$x$(NODE_NAME)", "$xnode-a"),
            ("${NODE_NAME}", "${NODE_NAME}"),
            ("$()", "$()"),
            ("$(EMPTY)x", "x"),
            ("é$(NODE_NAME)$é", "énode-a$é"),
            ("$(a$(NODE_NAME))", "$(a$(NODE_NAME))"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, env), want, "input {input:?}");
        }
    }

    #[test]
    fn bounded_expansion_gives_up_instead_of_growing() {
        let big = "x".repeat(100);
        assert_eq!(expand_bounded("$(A)$(A)", |_| Some(big.as_str()), 150), None);
        assert_eq!(
            expand_bounded("$(A)", |_| Some(big.as_str()), 150).map(|s| s.len()),
            Some(100)
        );
    }

    #[test]
    fn lists_references_but_not_escapes() {
        let refs: Vec<_> = references("$(A) $$(B) $(C").collect();
        assert_eq!(refs, vec![("A", 0)]);
        let refs: Vec<_> = references("x$(a$(B))").collect();
        assert_eq!(refs, vec![("a$(B", 1)]);
    }

    #[test]
    fn finds_shell_references() {
        let found = shell_references("--hostname=$NODE_NAME --x=${POD} $(K8S) $1 $ ${oops");
        let texts: Vec<&str> = found.iter().map(|(t, _)| *t).collect();
        assert_eq!(texts, vec!["$NODE_NAME", "${POD}"]);
    }
}
