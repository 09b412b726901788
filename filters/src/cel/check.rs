//! Name resolution and type checking: the syntax tree becomes an evaluable tree whose
//! attribute references are resolved, whose operand types agree, and whose regular
//! expressions are compiled.

use super::parse::{Ast, BinOp};
use super::{Attribute, MapAttribute, Peer, PeerField, Type};

/// An evaluable expression.
#[derive(Debug)]
pub enum Node {
    Bool(bool),
    Int(i64),
    Str(String),
    Attr(Attribute),
    Map(MapAttribute),
    Entry(MapAttribute, Box<Node>),
    HasEntry(MapAttribute, String),
    HasAttr(Attribute),
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    InList(Box<Node>, Vec<Node>),
    InMap(Box<Node>, MapAttribute),
    Arith(Arith, Box<Node>, Box<Node>),
    Concat(Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Size(Box<Node>),
    ToString(Box<Node>),
    ToInt(Box<Node>),
    StrTest(StrTest, Box<Node>, Box<Node>),
    Matches(Box<Node>, regex::Regex),
}

/// Comparisons.
#[derive(Debug, Clone, Copy)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Integer arithmetic.
#[derive(Debug, Clone, Copy)]
pub enum Arith {
    Sub,
    Add,
    Mul,
    Div,
    Rem,
}

/// String tests.
#[derive(Debug, Clone, Copy)]
pub enum StrTest {
    StartsWith,
    EndsWith,
    Contains,
}

type Checked = Result<(Node, Type), String>;

/// Resolves and type-checks `ast`.
pub fn check(ast: &Ast) -> Checked {
    match ast {
        Ast::Bool(b) => Ok((Node::Bool(*b), Type::Bool)),
        Ast::Int(i) => Ok((Node::Int(*i), Type::Int)),
        Ast::Str(s) => Ok((Node::Str(s.clone()), Type::Str)),
        Ast::Ident(_) | Ast::Select(..) => resolve(ast),
        Ast::Index(m, key) => {
            let (m, ty) = check(m)?;
            let Node::Map(map) = m else {
                return Err(format!("indexing a {ty} is not supported (only maps)"));
            };
            let (k, kt) = check(key)?;
            want(kt, Type::Str, "a map key")?;
            Ok((Node::Entry(map, Box::new(k)), Type::Str))
        }
        Ast::List(_) => Err("a list is only supported on the right of `in`".into()),
        Ast::Not(e) => {
            let (n, t) = check(e)?;
            want(t, Type::Bool, "the operand of `!`")?;
            Ok((Node::Not(Box::new(n)), Type::Bool))
        }
        Ast::Neg(e) => {
            let (n, t) = check(e)?;
            want(t, Type::Int, "the operand of `-`")?;
            Ok((Node::Neg(Box::new(n)), Type::Int))
        }
        Ast::Cond(c, a, b) => {
            let (c, ct) = check(c)?;
            want(ct, Type::Bool, "the condition of `? :`")?;
            let (a, at) = check(a)?;
            let (b, bt) = check(b)?;
            if at != bt {
                return Err(format!("the branches of `? :` are {at} and {bt}"));
            }
            Ok((Node::Cond(Box::new(c), Box::new(a), Box::new(b)), at))
        }
        Ast::Binary(op, l, r) => binary(*op, l, r),
        Ast::Call { target, name, args } => call(target.as_deref(), name, args),
    }
}

fn want(got: Type, wanted: Type, what: &str) -> Result<(), String> {
    if got == wanted {
        Ok(())
    } else {
        Err(format!("{what} is a {got}, a {wanted} is needed"))
    }
}

fn binary(op: BinOp, l: &Ast, r: &Ast) -> Checked {
    if op == BinOp::In {
        let (l, lt) = check(l)?;
        return match r {
            Ast::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let (n, t) = check(item)?;
                    if t != lt {
                        return Err(format!("`in` tests a {lt} against a list holding a {t}"));
                    }
                    out.push(n);
                }
                Ok((Node::InList(Box::new(l), out), Type::Bool))
            }
            other => {
                let (m, mt) = check(other)?;
                let Node::Map(map) = m else {
                    return Err(format!(
                        "the right of `in` is a {mt}; a list or a map is needed"
                    ));
                };
                want(lt, Type::Str, "a map key")?;
                Ok((Node::InMap(Box::new(l), map), Type::Bool))
            }
        };
    }
    let (ln, lt) = check(l)?;
    let (rn, rt) = check(r)?;
    let (ln, rn) = (Box::new(ln), Box::new(rn));
    match op {
        BinOp::And | BinOp::Or => {
            want(lt, Type::Bool, "an operand of a logical operator")?;
            want(rt, Type::Bool, "an operand of a logical operator")?;
            Ok((
                if op == BinOp::And {
                    Node::And(ln, rn)
                } else {
                    Node::Or(ln, rn)
                },
                Type::Bool,
            ))
        }
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            if lt != rt {
                return Err(format!("cannot compare a {lt} with a {rt}"));
            }
            if lt == Type::Map {
                return Err("maps cannot be compared".into());
            }
            let cmp = match op {
                BinOp::Eq => Cmp::Eq,
                BinOp::Ne => Cmp::Ne,
                BinOp::Lt => Cmp::Lt,
                BinOp::Le => Cmp::Le,
                BinOp::Gt => Cmp::Gt,
                _ => Cmp::Ge,
            };
            if lt == Type::Bool && !matches!(cmp, Cmp::Eq | Cmp::Ne) {
                return Err("booleans are only compared with == and !=".into());
            }
            Ok((Node::Cmp(cmp, ln, rn), Type::Bool))
        }
        BinOp::Add if lt == Type::Str && rt == Type::Str => Ok((Node::Concat(ln, rn), Type::Str)),
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
            want(lt, Type::Int, "an operand of arithmetic")?;
            want(rt, Type::Int, "an operand of arithmetic")?;
            let a = match op {
                BinOp::Add => Arith::Add,
                BinOp::Sub => Arith::Sub,
                BinOp::Mul => Arith::Mul,
                BinOp::Div => Arith::Div,
                _ => Arith::Rem,
            };
            Ok((Node::Arith(a, ln, rn), Type::Int))
        }
        BinOp::In => unreachable!("handled above"),
    }
}

fn call(target: Option<&Ast>, name: &str, args: &[Ast]) -> Checked {
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!(
                "{name}() takes {n} argument(s), got {}",
                args.len()
            ))
        }
    };
    match (target, name) {
        (None, "has") => {
            arity(1)?;
            has(&args[0])
        }
        (None, "size") | (Some(_), "size") => {
            let (n, t) = match target {
                Some(t) => {
                    arity(0)?;
                    check(t)?
                }
                None => {
                    arity(1)?;
                    check(&args[0])?
                }
            };
            want(t, Type::Str, "the argument of size()")?;
            Ok((Node::Size(Box::new(n)), Type::Int))
        }
        (None, "string") => {
            arity(1)?;
            let (n, t) = check(&args[0])?;
            if t == Type::Map {
                return Err("string() of a map is not supported".into());
            }
            Ok((Node::ToString(Box::new(n)), Type::Str))
        }
        (None, "int") | (None, "uint") => {
            arity(1)?;
            let (n, t) = check(&args[0])?;
            if !matches!(t, Type::Int | Type::Str) {
                return Err(format!("{name}() of a {t} is not supported"));
            }
            Ok((Node::ToInt(Box::new(n)), Type::Int))
        }
        (Some(t), "startsWith" | "endsWith" | "contains") => {
            arity(1)?;
            let (s, st) = check(t)?;
            want(st, Type::Str, &format!("the receiver of {name}()"))?;
            let (a, at) = check(&args[0])?;
            want(at, Type::Str, &format!("the argument of {name}()"))?;
            let test = match name {
                "startsWith" => StrTest::StartsWith,
                "endsWith" => StrTest::EndsWith,
                _ => StrTest::Contains,
            };
            Ok((Node::StrTest(test, Box::new(s), Box::new(a)), Type::Bool))
        }
        (Some(t), "matches") => {
            arity(1)?;
            let (s, st) = check(t)?;
            want(st, Type::Str, "the receiver of matches()")?;
            let Ast::Str(pattern) = &args[0] else {
                return Err("matches() needs a string literal pattern".into());
            };
            let re =
                regex::Regex::new(pattern).map_err(|e| format!("matches({pattern:?}): {e}"))?;
            Ok((Node::Matches(Box::new(s), re), Type::Bool))
        }
        (_, other) => Err(format!("function {other}() is not supported")),
    }
}

/// `has(x.f)`: an entry of a map, or whether an attribute is present.
fn has(arg: &Ast) -> Checked {
    let Ast::Select(obj, field) = arg else {
        return Err("has() needs a field selection, like has(request.headers.x)".into());
    };
    if let Ok((Node::Map(map), _)) = resolve(obj) {
        return Ok((Node::HasEntry(map, field.clone()), Type::Bool));
    }
    match resolve(arg)? {
        (Node::Attr(a), _) => Ok((Node::HasAttr(a), Type::Bool)),
        // A map attribute is always present (perhaps empty).
        (Node::Map(_), _) => Ok((Node::Bool(true), Type::Bool)),
        _ => Err("has() of this expression is not supported".into()),
    }
}

/// The dotted path of an identifier/selection chain.
fn path(ast: &Ast) -> Option<Vec<&str>> {
    match ast {
        Ast::Ident(s) => Some(vec![s.as_str()]),
        Ast::Select(obj, f) => {
            let mut p = path(obj)?;
            p.push(f);
            Some(p)
        }
        _ => None,
    }
}

fn resolve(ast: &Ast) -> Checked {
    // `map.field` is `map['field']`.
    if let Ast::Select(obj, field) = ast {
        if let Ok((Node::Map(map), _)) = resolve(obj) {
            return Ok((
                Node::Entry(map, Box::new(Node::Str(field.clone()))),
                Type::Str,
            ));
        }
    }
    let p = path(ast)
        .ok_or_else(|| "field selection on a computed value is not supported".to_string())?;
    let joined = p.join(".");
    let (node, ty) = match p.as_slice() {
        ["request", "headers"] => (Node::Map(MapAttribute::RequestHeaders), Type::Map),
        ["response", "headers"] => (Node::Map(MapAttribute::ResponseHeaders), Type::Map),
        [peer @ ("upstream_peer" | "downstream_peer"), rest @ ..] => {
            let peer = if *peer == "upstream_peer" {
                Peer::Upstream
            } else {
                Peer::Downstream
            };
            let field = match rest {
                ["labels"] => return Ok((Node::Map(MapAttribute::PeerLabels(peer)), Type::Map)),
                ["name"] => PeerField::Name,
                ["namespace"] => PeerField::Namespace,
                ["workload"] | ["workload_name"] => PeerField::Workload,
                ["cluster"] | ["cluster_id"] => PeerField::Cluster,
                ["service"] | ["canonical_service"] => PeerField::Service,
                ["revision"] | ["canonical_revision"] => PeerField::Revision,
                ["app"] => PeerField::App,
                ["version"] => PeerField::Version,
                _ => return Err(format!("attribute {joined} is not supported")),
            };
            (Node::Attr(Attribute::Peer(peer, field)), Type::Str)
        }
        _ => {
            use Attribute as A;
            let (a, t) = match joined.as_str() {
                "request.path" => (A::RequestPath, Type::Str),
                "request.url_path" => (A::RequestUrlPath, Type::Str),
                "request.host" => (A::RequestHost, Type::Str),
                "request.scheme" => (A::RequestScheme, Type::Str),
                "request.method" => (A::RequestMethod, Type::Str),
                "request.id" => (A::RequestId, Type::Str),
                "request.referer" => (A::RequestReferer, Type::Str),
                "request.useragent" => (A::RequestUserAgent, Type::Str),
                "request.protocol" => (A::RequestProtocol, Type::Str),
                "request.query" => (A::RequestQuery, Type::Str),
                "request.size" => (A::RequestSize, Type::Int),
                "request.total_size" => (A::RequestTotalSize, Type::Int),
                "response.code" => (A::ResponseCode, Type::Int),
                "response.code_details" => (A::ResponseCodeDetails, Type::Str),
                "response.grpc_status" => (A::ResponseGrpcStatus, Type::Int),
                "response.size" => (A::ResponseSize, Type::Int),
                "response.total_size" => (A::ResponseTotalSize, Type::Int),
                "source.address" => (A::SourceAddress, Type::Str),
                "source.port" => (A::SourcePort, Type::Int),
                "destination.address" => (A::DestinationAddress, Type::Str),
                "destination.port" => (A::DestinationPort, Type::Int),
                "upstream.address" => (A::UpstreamAddress, Type::Str),
                "upstream.port" => (A::UpstreamPort, Type::Int),
                "connection.mtls" => (A::ConnectionMtls, Type::Bool),
                "xds.cluster_name" => (A::XdsClusterName, Type::Str),
                "xds.route_name" => (A::XdsRouteName, Type::Str),
                _ => return Err(format!("attribute {joined} is not supported")),
            };
            (Node::Attr(a), t)
        }
    };
    Ok((node, ty))
}
