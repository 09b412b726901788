//! Tokens and syntax: CEL's expression grammar, restricted to what [`super`] supports.
//! Errors carry the byte offset.

/// The syntax tree, before attribute names are resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    Ident(String),
    Select(Box<Ast>, String),
    Index(Box<Ast>, Box<Ast>),
    Call {
        target: Option<Box<Ast>>,
        name: String,
        args: Vec<Ast>,
    },
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<Ast>),
    Not(Box<Ast>),
    Neg(Box<Ast>),
    Binary(BinOp, Box<Ast>, Box<Ast>),
    Cond(Box<Ast>, Box<Ast>, Box<Ast>),
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Punct(&'static str),
}

const PUNCT: &[&str] = &[
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "?", ":", "(", ")", "[", "]", ".", ",", "+",
    "-", "*", "/", "%", "{", "}",
];

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, String> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push((start, Tok::Ident(src[start..i].to_string())));
        } else if c.is_ascii_digit() {
            let hex = c == b'0' && matches!(bytes.get(i + 1), Some(b'x' | b'X'));
            if hex {
                i += 2;
            }
            let digits = i;
            while i < bytes.len()
                && bytes[i].is_ascii_hexdigit()
                && (hex || bytes[i].is_ascii_digit())
            {
                i += 1;
            }
            if i < bytes.len()
                && bytes[i] == b'.'
                && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
            {
                return Err(format!(
                    "at {start}: floating point numbers are not supported"
                ));
            }
            let text = &src[digits..i];
            let n = if hex {
                i64::from_str_radix(text, 16)
            } else {
                text.parse::<i64>()
            }
            .map_err(|e| format!("at {start}: integer {:?}: {e}", &src[start..i]))?;
            // `200u` is a uint literal; attributes are read as ints, so it is the same.
            if i < bytes.len() && (bytes[i] == b'u' || bytes[i] == b'U') {
                i += 1;
            }
            out.push((start, Tok::Int(n)));
        } else if c == b'"' || c == b'\'' {
            if src[i..].starts_with("\"\"\"") || src[i..].starts_with("'''") {
                return Err(format!(
                    "at {start}: triple-quoted strings are not supported"
                ));
            }
            i += 1;
            let mut s = String::new();
            loop {
                let Some(ch) = src[i..].chars().next() else {
                    return Err(format!("at {start}: unterminated string"));
                };
                i += ch.len_utf8();
                if ch as u32 == c as u32 {
                    break;
                }
                if ch == '\\' {
                    let Some(e) = src[i..].chars().next() else {
                        return Err(format!("at {start}: unterminated string"));
                    };
                    i += e.len_utf8();
                    s.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '\\' | '\'' | '"' | '`' | '?' => e,
                        other => {
                            return Err(format!("at {}: escape \\{other} is not supported", i - 2))
                        }
                    });
                } else {
                    s.push(ch);
                }
            }
            out.push((start, Tok::Str(s)));
        } else if let Some(p) = PUNCT.iter().find(|p| src[i..].starts_with(**p)) {
            i += p.len();
            out.push((start, Tok::Punct(p)));
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            return Err(format!("at {start}: unexpected character {ch:?}"));
        }
    }
    Ok(out)
}

/// Parses `src` into a syntax tree.
pub fn parse(src: &str) -> Result<Ast, String> {
    let toks = lex(src)?;
    if toks.is_empty() {
        return Err("empty expression".into());
    }
    let mut p = Parser {
        toks,
        pos: 0,
        end: src.len(),
        depth: 0,
    };
    let ast = p.expr()?;
    if let Some((at, t)) = p.toks.get(p.pos) {
        return Err(format!("at {at}: unexpected {}", show(t)));
    }
    Ok(ast)
}

fn show(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("{s:?}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Int(i) => format!("integer {i}"),
        Tok::Punct(p) => format!("{p:?}"),
    }
}

/// Nesting beyond this is refused (the parser recurses).
const MAX_DEPTH: usize = 64;

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.toks.get(self.pos).map(|(a, _)| *a).unwrap_or(self.end)
    }

    fn eat(&mut self, p: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Punct(q)) if *q == p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str) -> Result<(), String> {
        if self.eat(p) {
            return Ok(());
        }
        let found = self
            .peek()
            .map(show)
            .unwrap_or_else(|| "the end".to_string());
        Err(format!("at {}: expected {p:?}, found {found}", self.at()))
    }

    fn expr(&mut self) -> Result<Ast, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("at {}: nested too deeply", self.at()));
        }
        let c = self.or()?;
        let out = if self.eat("?") {
            let a = self.expr()?;
            self.expect(":")?;
            let b = self.expr()?;
            Ast::Cond(Box::new(c), Box::new(a), Box::new(b))
        } else {
            c
        };
        self.depth -= 1;
        Ok(out)
    }

    fn or(&mut self) -> Result<Ast, String> {
        let mut l = self.and()?;
        while self.eat("||") {
            let r = self.and()?;
            l = Ast::Binary(BinOp::Or, Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Ast, String> {
        let mut l = self.rel()?;
        while self.eat("&&") {
            let r = self.rel()?;
            l = Ast::Binary(BinOp::And, Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn rel(&mut self) -> Result<Ast, String> {
        let mut l = self.add()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Punct("==")) => BinOp::Eq,
                Some(Tok::Punct("!=")) => BinOp::Ne,
                Some(Tok::Punct("<")) => BinOp::Lt,
                Some(Tok::Punct("<=")) => BinOp::Le,
                Some(Tok::Punct(">")) => BinOp::Gt,
                Some(Tok::Punct(">=")) => BinOp::Ge,
                Some(Tok::Ident(s)) if s == "in" => BinOp::In,
                _ => return Ok(l),
            };
            self.pos += 1;
            let r = self.add()?;
            l = Ast::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn add(&mut self) -> Result<Ast, String> {
        let mut l = self.mul()?;
        loop {
            let op = if self.eat("+") {
                BinOp::Add
            } else if self.eat("-") {
                BinOp::Sub
            } else {
                return Ok(l);
            };
            let r = self.mul()?;
            l = Ast::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn mul(&mut self) -> Result<Ast, String> {
        let mut l = self.unary()?;
        loop {
            let op = if self.eat("*") {
                BinOp::Mul
            } else if self.eat("/") {
                BinOp::Div
            } else if self.eat("%") {
                BinOp::Rem
            } else {
                return Ok(l);
            };
            let r = self.unary()?;
            l = Ast::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn unary(&mut self) -> Result<Ast, String> {
        if self.eat("!") {
            return Ok(Ast::Not(Box::new(self.unary()?)));
        }
        if self.eat("-") {
            return Ok(match self.unary()? {
                Ast::Int(i) => Ast::Int(-i),
                other => Ast::Neg(Box::new(other)),
            });
        }
        self.member()
    }

    fn member(&mut self) -> Result<Ast, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let at = self.at();
                let Some(Tok::Ident(name)) = self.peek().cloned() else {
                    return Err(format!("at {at}: expected a field name after \".\""));
                };
                self.pos += 1;
                if self.eat("(") {
                    let args = self.args(")")?;
                    e = Ast::Call {
                        target: Some(Box::new(e)),
                        name,
                        args,
                    };
                } else {
                    e = Ast::Select(Box::new(e), name);
                }
            } else if self.eat("[") {
                let key = self.expr()?;
                self.expect("]")?;
                e = Ast::Index(Box::new(e), Box::new(key));
            } else {
                return Ok(e);
            }
        }
    }

    fn args(&mut self, close: &str) -> Result<Vec<Ast>, String> {
        let mut args = Vec::new();
        if self.eat(close) {
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            if self.eat(close) {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }

    fn primary(&mut self) -> Result<Ast, String> {
        let at = self.at();
        let Some(t) = self.peek().cloned() else {
            return Err(format!("at {at}: unexpected end of expression"));
        };
        self.pos += 1;
        match t {
            Tok::Int(i) => Ok(Ast::Int(i)),
            Tok::Str(s) => Ok(Ast::Str(s)),
            Tok::Ident(s) if s == "true" => Ok(Ast::Bool(true)),
            Tok::Ident(s) if s == "false" => Ok(Ast::Bool(false)),
            Tok::Ident(s) if s == "null" => Err(format!("at {at}: null is not supported")),
            Tok::Ident(s) => {
                if self.eat("(") {
                    let args = self.args(")")?;
                    Ok(Ast::Call {
                        target: None,
                        name: s,
                        args,
                    })
                } else {
                    Ok(Ast::Ident(s))
                }
            }
            Tok::Punct("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Punct("[") => Ok(Ast::List(self.args("]")?)),
            Tok::Punct("{") => Err(format!("at {at}: map literals are not supported")),
            other => Err(format!("at {at}: unexpected {}", show(&other))),
        }
    }
}
