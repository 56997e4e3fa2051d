#!/usr/bin/env node
// The S3-compatible server of dtrain's storage tests and of the compose `s3` profile: s3rver (the npm package
// @20minutes/s3rver, pinned in package-lock.json; why this one: docs/storage.md "Object storage"), with one account
// whose access key and secret come from the environment, buckets created at start, and one log line per request.
//
//   S3_SERVER_ACCESS_KEY=KEY S3_SERVER_SECRET_KEY=SECRET node eng/s3-server/server.js \
//       --directory DIR [--address 127.0.0.1] [--port 0] [--bucket NAME]...
//
// --port 0 (the default) takes any free port. Once listening it prints `s3-server: listening on http://ADDR:PORT`
// (the line tests wait for), then `s3-server: GET /bucket/key range=bytes=0-9 -> 206` for every request. SIGTERM or
// SIGINT closes it. Requests signed with another key or secret are refused (InvalidAccessKeyId,
// SignatureDoesNotMatch); unsigned requests are refused too (AccessDenied), unlike plain s3rver.
'use strict';

const S3rver = require('@20minutes/s3rver');
const Account = require('@20minutes/s3rver/lib/models/account');
const v4 = require('@20minutes/s3rver/lib/signature/v4');

// SigV4's canonical URI is the request's path as sent (URI-encoded once). s3rver rebuilds it from the decoded bucket and
// key, which drops the trailing slash of a path-style bucket request (`GET /bucket/?list-type=2`, as the AWS SDK for
// .NET sends it) and so refuses every correctly signed bucket request with SignatureDoesNotMatch. The path as sent is
// kept on the request (below) and used instead; the signature is still computed and compared by s3rver.
const rawPaths = new WeakMap(); // a request's headers object -> its path as sent
const stringToSign = v4.getStringToSign;
v4.getStringToSign = (canonicalRequest, request) => {
  const uri = rawPaths.get(canonicalRequest.headers);
  return stringToSign(uri ? { ...canonicalRequest, uri } : canonicalRequest, request);
};

function fail(message) {
  process.stderr.write(`s3-server: ${message}\n`);
  process.exit(2);
}

const options = { address: '127.0.0.1', port: 0, buckets: [] };
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  const name = args[i];
  const value = args[i + 1];
  if (!['--directory', '--address', '--port', '--bucket'].includes(name)) fail(`unknown argument ${name}`);
  if (value === undefined || value.startsWith('--')) fail(`${name} needs a value`);
  i++;
  if (name === '--directory') options.directory = value;
  else if (name === '--address') options.address = value;
  else if (name === '--bucket') options.buckets.push(value);
  else if (!/^\d+$/.test(value) || Number(value) > 65535) fail(`--port: "${value}" is not a port (0 = any free port)`);
  else options.port = Number(value);
}
if (!options.directory) fail('--directory DIR is required (where the buckets are stored)');
const accessKey = process.env.S3_SERVER_ACCESS_KEY;
const secretKey = process.env.S3_SERVER_SECRET_KEY;
if (!accessKey || !secretKey) fail('set S3_SERVER_ACCESS_KEY and S3_SERVER_SECRET_KEY (the one account it accepts)');

// s3rver ships a well-known key pair (S3RVER/S3RVER): replace it with ours.
Account.DUMMY_ACCOUNT.revokeAccessKey('S3RVER');
Account.DUMMY_ACCOUNT.createKeyPair(accessKey, secretKey);

const app = new S3rver({
  directory: options.directory,
  address: options.address,
  port: options.port,
  silent: true,
  vhostBuckets: false,
  configureBuckets: options.buckets.map((name) => ({ name })),
});

// First middleware: refuse anonymous requests (s3rver lets them through), and log every request with its outcome.
app.middleware.unshift(async (ctx, next) => {
  let status;
  rawPaths.set(ctx.headers, ctx.req.url.split('?')[0]);
  try {
    const signed = 'authorization' in ctx.headers || 'X-Amz-Algorithm' in ctx.query || 'Signature' in ctx.query;
    if (!signed) {
      ctx.status = 403;
      ctx.type = 'application/xml';
      ctx.body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Anonymous access is refused</Message></Error>';
      status = 403;
      return;
    }
    await next();
    status = ctx.status;
  } catch (err) {
    status = err.status || err.statusCode || 500;
    throw err;
  } finally {
    const range = ctx.headers.range ? ` range=${ctx.headers.range}` : '';
    process.stdout.write(`s3-server: ${ctx.method} ${ctx.url}${range} -> ${status}\n`);
  }
});

app.run().then(
  (address) => process.stdout.write(`s3-server: listening on http://${address.address}:${address.port}\n`),
  (err) => fail(`could not start: ${err.message}`),
);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    app.close().finally(() => process.exit(0));
    // Open keep-alive connections would hold close() back.
    app.httpServer?.closeAllConnections?.();
  });
}
