//! `switchyard iso8583`: the integrators' tool. Decodes messages of any dialect to the
//! JSON shape of the contract's vectors, encodes that JSON back to wire hex, and lists
//! and prints the built-in dialects.
//!
//! Entry point: [`run`] with [`Iso8583Args`] (a `clap::Args`, to be mounted as a
//! subcommand of the `switchyard` binary).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use codec::spec::leak;
use codec::{Dialect, FrameCodec, MacCheck, MacKey, OwnedMessage, builtin};
use serde_json::Value;
use tokio_util::codec::Decoder;

/// Largest input read from a file or standard input: a hex dump of many frames, far
/// above any message a dialect allows, and small enough to refuse a wrong file early.
const INPUT_LIMIT_BYTES: u64 = 16 * 1024 * 1024;

/// ISO 8583 tools: decode, encode, list and print dialects.
#[derive(clap::Args, Debug)]
pub(crate) struct Iso8583Args {
    #[command(subcommand)]
    command: Iso8583Command,
}

#[derive(clap::Subcommand, Debug)]
enum Iso8583Command {
    /// Decodes a message and prints it as JSON ({"t": MTI, "2": ..., "mac": ...}).
    Decode(DecodeArgs),
    /// Encodes a JSON message ({"t": "0200", "2": "...", ...}) and prints its hex.
    Encode(EncodeArgs),
    /// Lists the built-in dialects.
    Dialects,
    /// Prints a built-in dialect as a TOML dialect file (a start for a new one).
    Dialect {
        /// The built-in dialect's name.
        name: String,
    },
}

/// Which dialect to use: a built-in one by name, or a dialect file.
#[derive(clap::Args, Debug)]
struct DialectChoice {
    /// A built-in dialect (see `dialects`).
    #[arg(long, default_value = builtin::MERCHANT_H2H_V1, conflicts_with = "dialect_file")]
    dialect: String,
    /// A dialect file, TOML or (when named *.json) JSON.
    #[arg(long, value_name = "PATH")]
    dialect_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct DecodeArgs {
    /// The message: hex, a file of raw bytes, or `-` to read hex from standard input.
    input: String,
    #[command(flatten)]
    dialect: DialectChoice,
    /// The input is framed (length prefix and header): strip it; several frames may follow
    /// one another, each is printed on its own line.
    #[arg(long)]
    framed: bool,
    /// Show DE2 and DE35 in full instead of masked.
    #[arg(long)]
    show_pan: bool,
    /// A MAC key (64 hex digits): also report whether the MAC is valid.
    #[arg(long, value_name = "HEX")]
    mac_key: Option<String>,
}

#[derive(clap::Args, Debug)]
struct EncodeArgs {
    /// The message as JSON; read from standard input when absent or `-`.
    json: Option<String>,
    #[command(flatten)]
    dialect: DialectChoice,
    /// Add the dialect's framing (length prefix and header).
    #[arg(long)]
    framed: bool,
    /// The frame header in hex (with --framed); zeros when absent.
    #[arg(long, value_name = "HEX", requires = "framed")]
    header: Option<String>,
    /// A MAC key (64 hex digits): compute the MAC into the element the dialect names,
    /// replacing any DE64/DE128 in the JSON.
    #[arg(long, value_name = "HEX")]
    mac_key: Option<String>,
}

/// Runs one `switchyard iso8583` command, reading standard input and writing standard
/// output.
pub(crate) fn run(args: Iso8583Args) -> Result<()> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    execute(args, &mut stdin.lock(), &mut stdout.lock())
}

fn execute(args: Iso8583Args, input: &mut dyn Read, out: &mut dyn Write) -> Result<()> {
    match args.command {
        Iso8583Command::Decode(a) => decode(a, input, out),
        Iso8583Command::Encode(a) => encode(a, input, out),
        Iso8583Command::Dialects => {
            for name in builtin::names() {
                let d = builtin::get(name).context("built-in dialect")?;
                writeln!(out, "{name}\t{}", d.description)?;
            }
            Ok(())
        }
        Iso8583Command::Dialect { name } => {
            let d = builtin_dialect(&name)?;
            let text = toml::to_string(&d.to_file()).context("writing the dialect as TOML")?;
            out.write_all(text.as_bytes())?;
            Ok(())
        }
    }
}

fn builtin_dialect(name: &str) -> Result<&'static Dialect> {
    builtin::get(name).ok_or_else(|| {
        let known: Vec<&str> = builtin::names().collect();
        anyhow!(
            "no built-in dialect {name:?} (built in: {})",
            known.join(", ")
        )
    })
}

fn dialect(choice: &DialectChoice) -> Result<&'static Dialect> {
    match &choice.dialect_file {
        // The tool runs once and exits; the dialect lives as long as the process anyway.
        Some(path) => Ok(leak(Dialect::from_path(path)?)),
        None => builtin_dialect(&choice.dialect),
    }
}

fn mac_key(hex_key: Option<&str>) -> Result<Option<MacKey>> {
    hex_key
        .map(|k| MacKey::from_hex(k).context("--mac-key must be 64 hexadecimal digits"))
        .transpose()
}

fn read_limited(input: &mut dyn Read, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    input
        .take(INPUT_LIMIT_BYTES + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {what}"))?;
    if buf.len() as u64 > INPUT_LIMIT_BYTES {
        bail!("{what} is over {INPUT_LIMIT_BYTES} bytes");
    }
    Ok(buf)
}

/// Hex with any whitespace (as in a pasted dump) and an optional `0x` removed.
fn parse_hex(text: &str) -> Result<Vec<u8>> {
    let digits: String = text.split_whitespace().collect();
    let digits = digits.strip_prefix("0x").unwrap_or(&digits);
    hex::decode(digits).context("not hexadecimal")
}

/// The decode input: `-` is hex on standard input, an existing file is raw bytes, and
/// anything else must be hex.
fn message_bytes(arg: &str, stdin: &mut dyn Read) -> Result<Vec<u8>> {
    if arg == "-" {
        let text = read_limited(stdin, "standard input")?;
        return parse_hex(&String::from_utf8_lossy(&text));
    }
    let path = Path::new(arg);
    if path.is_file() {
        let file = std::fs::File::open(path).with_context(|| format!("opening {arg}"))?;
        return read_limited(&mut file.take(INPUT_LIMIT_BYTES + 1), arg);
    }
    parse_hex(arg).with_context(|| format!("{arg:?} is neither hex nor a file"))
}

fn decode(a: DecodeArgs, stdin: &mut dyn Read, out: &mut dyn Write) -> Result<()> {
    let d = dialect(&a.dialect)?;
    let key = mac_key(a.mac_key.as_deref())?;
    let bytes = message_bytes(&a.input, stdin)?;
    let messages = if a.framed {
        unframe(d, bytes)?
    } else {
        vec![Bytes::from(bytes)]
    };
    for message in messages {
        let line = decode_one(d, message, a.show_pan, key.as_ref())?;
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn unframe(d: &Dialect, bytes: Vec<u8>) -> Result<Vec<Bytes>> {
    let mut codec = FrameCodec::new(d.framing, d.max_message_len);
    let mut buf = BytesMut::from(&bytes[..]);
    let mut messages = Vec::new();
    while let Some(frame) = codec.decode(&mut buf).context("framing")? {
        messages.push(frame.message);
    }
    if !buf.is_empty() {
        bail!(
            "framing: {} bytes after the last whole frame (a frame cut short?)",
            buf.len()
        );
    }
    if messages.is_empty() {
        bail!("framing: no frame in the input");
    }
    Ok(messages)
}

fn decode_one(
    d: &'static Dialect,
    message: Bytes,
    show_pan: bool,
    key: Option<&MacKey>,
) -> Result<String> {
    match d.decode(message.clone()) {
        Ok(m) => {
            let mut json = OwnedMessage::from(&m).to_json(d, show_pan);
            if let (Some(key), Value::Object(map)) = (key, &mut json) {
                let check = match m.check_mac(key) {
                    MacCheck::Valid => "valid",
                    MacCheck::Missing => "missing",
                    MacCheck::Invalid => "invalid",
                    MacCheck::Misplaced => "misplaced",
                };
                map.insert("mac".into(), Value::String(check.into()));
            }
            Ok(json_line(&json))
        }
        Err(e) => {
            // Show what could be read: integrators fix one element at a time.
            let salvaged = d
                .salvage(message)
                .map(|m| json_line(&OwnedMessage::from(&m).to_json(d, show_pan)))
                .unwrap_or_else(|| "nothing (no readable MTI)".into());
            bail!("cannot decode with {}: {e}; readable: {salvaged}", d.name)
        }
    }
}

/// The vectors' layout: `t` first, elements in numeric order, then anything else.
fn json_line(v: &Value) -> String {
    let Value::Object(map) = v else {
        return v.to_string();
    };
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| match k.as_str() {
        "t" => (0, 0, (*k).clone()),
        n => match n.parse::<u16>() {
            Ok(n) => (1, n, String::new()),
            Err(_) => (2, 0, (*k).clone()),
        },
    });
    let fields: Vec<String> = keys
        .into_iter()
        .map(|k| format!("{}:{}", Value::String(k.clone()), map[k]))
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn encode(a: EncodeArgs, stdin: &mut dyn Read, out: &mut dyn Write) -> Result<()> {
    let d = dialect(&a.dialect)?;
    let key = mac_key(a.mac_key.as_deref())?;
    let text = match a.json.as_deref() {
        None | Some("-") => String::from_utf8(read_limited(stdin, "standard input")?)
            .context("standard input is not UTF-8")?,
        Some(json) => json.to_owned(),
    };
    let value: Value = serde_json::from_str(&text).context("the message is not JSON")?;
    let mut msg = OwnedMessage::from_json(d, &value)?;
    let wire = match &key {
        Some(key) => {
            msg.fields.remove(&64);
            msg.fields.remove(&128);
            msg.encode_with_mac(d, key)?
        }
        None => msg.encode(d)?,
    };
    let wire = if a.framed {
        let header = match &a.header {
            Some(h) => parse_hex(h).context("--header")?,
            None => vec![0; usize::from(d.framing.header_len)],
        };
        let mut framed = BytesMut::new();
        FrameCodec::new(d.framing, d.max_message_len)
            .encode_parts(&header, &wire, &mut framed)
            .with_context(|| format!("framing (the header is {} bytes)", d.framing.header_len))?;
        framed.freeze()
    } else {
        wire
    };
    writeln!(out, "{}", hex::encode_upper(&wire))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: Iso8583Args,
    }

    /// The contract's vectors, as the merchants' integrators have them.
    fn vector(name: &str) -> (String, Value, String) {
        let v: Value =
            serde_json::from_str(include_str!("../../codec/tests/data/merchant-h2h-v1.json"))
                .unwrap();
        let key = v["mac_key_hex"].as_str().unwrap().to_owned();
        let found = v["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap()
            .clone();
        (
            found["hex"].as_str().unwrap().to_owned(),
            found["elements"].clone(),
            key,
        )
    }

    fn call(argv: &[&str], stdin: &str) -> Result<String> {
        let cli = Cli::try_parse_from(std::iter::once("iso8583").chain(argv.iter().copied()))?;
        let mut out = Vec::new();
        execute(cli.args, &mut stdin.as_bytes(), &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn parsed(line: &str) -> Value {
        serde_json::from_str(line.trim()).unwrap()
    }

    // Proves decode masks the card number unless asked, and reports the MAC with a key.
    #[test]
    fn decode_purchase_vector_masks_pan_by_default() {
        let (hex, elements, key) = vector("purchase request");
        let out = call(&["decode", &hex], "").unwrap();
        assert!(
            out.starts_with(r#"{"t":"0200","2":"411111******1111","3":"000000""#),
            "{out}"
        );
        let v = parsed(&out);
        assert_eq!(v["48"], "OR010ORDER-1001");
        assert!(v.get("mac").is_none());

        let out = call(&["decode", &hex, "--show-pan", "--mac-key", &key], "").unwrap();
        let mut expected = elements.clone();
        expected["mac"] = "valid".into();
        assert_eq!(parsed(&out), expected);

        let (bad, _, _) = vector("purchase request with a wrong MAC (answer 63)");
        let out = call(&["decode", &bad, "--mac-key", &key], "").unwrap();
        assert_eq!(parsed(&out)["mac"], "invalid");
    }

    // Proves the three input forms (argument, stdin hex, raw file) and framing agree.
    #[test]
    fn decode_inputs_and_frames() {
        let (hex, elements, _) = vector("echo request");
        let expected = call(&["decode", &hex, "--show-pan"], "").unwrap();
        assert_eq!(parsed(&expected), elements);
        assert_eq!(
            call(&["decode", "-", "--show-pan"], &format!("{hex}\n")).unwrap(),
            expected
        );

        let raw = hex::decode(&hex).unwrap();
        let path = std::env::temp_dir().join(format!("iso8583-cli-{}.bin", std::process::id()));
        std::fs::write(&path, &raw).unwrap();
        let from_file = call(&["decode", path.to_str().unwrap(), "--show-pan"], "");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(from_file.unwrap(), expected);

        let framed = format!("{:04X}{hex}{:04X}{hex}", raw.len(), raw.len());
        let out = call(&["decode", &framed, "--framed", "--show-pan"], "").unwrap();
        assert_eq!(out, format!("{expected}{expected}"));
        assert!(call(&["decode", &framed[..framed.len() - 2], "--framed"], "").is_err());
    }

    // Proves a faulty message is refused with the element, offset and what was readable.
    #[test]
    fn decode_errors_name_the_fault() {
        let (hex, _, _) = vector("purchase request");
        let mut raw = hex::decode(&hex).unwrap();
        raw[32] = b'X'; // inside DE3 (30..36)
        let e = call(&["decode", &hex::encode(&raw)], "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("DE3 at byte 32: non-numeric"), "{e}");
        assert!(e.contains(r#""11":"000003""#), "{e}");
        let e = call(&["decode", "zz-not-hex"], "").unwrap_err();
        assert!(format!("{e:#}").contains("neither hex nor a file"), "{e:#}");
        assert!(call(&["decode", &hex, "--dialect", "nope"], "").is_err());
    }

    // Proves encode reproduces the contract's bytes from its JSON, with a fresh MAC.
    #[test]
    fn encode_vector_with_mac_and_framing() {
        let (hex, elements, key) = vector("purchase request");
        let json = elements.to_string();
        let out = call(&["encode", &json], "").unwrap();
        assert_eq!(out.trim(), hex);
        let mut no_mac = elements.clone();
        no_mac.as_object_mut().unwrap().remove("64");
        let out = call(&["encode", "--mac-key", &key], &no_mac.to_string()).unwrap();
        assert_eq!(out.trim(), hex);
        let out = call(&["encode", "-", "--framed"], &json).unwrap();
        assert_eq!(out.trim(), format!("{:04X}{hex}", hex.len() / 2));
        let e = call(&["encode", r#"{"t":"0200","5":"1"}"#], "").unwrap_err();
        assert!(e.to_string().contains("element 5"), "{e}");
    }

    // Proves bank dialects round-trip through the tool, header included.
    #[test]
    fn encode_then_decode_bank_frames() {
        let json = r#"{"t":"0800","7":"1126065300","11":"000001","70":"001"}"#;
        let out = call(
            &[
                "encode",
                json,
                "--dialect",
                "bank-bcd-v1",
                "--framed",
                "--header",
                "6000010000",
            ],
            "",
        )
        .unwrap();
        // 2 + 16 + 5 + 3 + 2 message bytes and the 5-byte TPDU: 33 = 0x21.
        assert!(
            out.starts_with("0021600001000008008220000000000000"),
            "{out}"
        );
        let back = call(
            &["decode", out.trim(), "--dialect", "bank-bcd-v1", "--framed"],
            "",
        )
        .unwrap();
        assert_eq!(parsed(&back), parsed(json));
    }

    // Proves the dialect listing and that a printed dialect loads back as the same one.
    #[test]
    fn dialects_list_and_print() {
        let out = call(&["dialects"], "").unwrap();
        assert_eq!(out.lines().count(), builtin::names().count());
        assert!(out.contains("bank-ebcdic-v1\t"));
        let text = call(&["dialect", "bank-bcd-v1"], "").unwrap();
        assert_eq!(&Dialect::from_toml(&text).unwrap(), builtin::bank_bcd());
        let path = std::env::temp_dir().join(format!("iso8583-cli-{}.toml", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let json = r#"{"t":"0800","11":"000001","70":"301"}"#;
        let with_file = call(
            &["encode", json, "--dialect-file", path.to_str().unwrap()],
            "",
        );
        std::fs::remove_file(&path).unwrap();
        let builtin_out = call(&["encode", json, "--dialect", "bank-bcd-v1"], "").unwrap();
        assert_eq!(with_file.unwrap(), builtin_out);
    }
}
