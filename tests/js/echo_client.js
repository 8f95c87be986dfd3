// A plain grpc-js app: no FastProxy code, a channel pointed at the out-proxy.
// Makes each RPC kind of test.v1.Echo (raw bytes), an app error and a denied call, and prints
// one JSON object with what it saw. Usage: node echo_client.js HOST:PORT
'use strict';
const grpc = require('@grpc/grpc-js');

const raw = { serialize: (b) => b, deserialize: (b) => b };
const path = (m) => `/test.v1.Echo/${m}`;
const target = process.argv[2];
const client = new grpc.Client(target, grpc.credentials.createInsecure());
const deadline = () => new Date(Date.now() + 10000);

function md(extra) {
  const m = new grpc.Metadata();
  m.set('x-test-echo', '1');
  m.set('x-echo-lang', 'js');
  m.set('x-echo-bin', Buffer.from([0, 1, 2, 255]));
  for (const [k, v] of Object.entries(extra || {})) m.set(k, v);
  return m;
}

function outcome(err, values, trailers, headers) {
  const out = { values: values.map((b) => b.toString('utf8')) };
  if (err) {
    out.code = err.code;
    out.details = err.details;
    out.trailers = err.metadata ? err.metadata.getMap() : {};
    for (const k of Object.keys(out.trailers)) {
      if (Buffer.isBuffer(out.trailers[k])) out.trailers[k] = out.trailers[k].toString('hex');
    }
  } else {
    out.code = 0;
    out.trailers = { 'x-echo-lang': trailers.get('x-echo-lang')[0],
                     'x-echo-bin': trailers.get('x-echo-bin')[0].toString('hex') };
    out.headers = { 'x-echo-lang': headers.get('x-echo-lang')[0] };
  }
  return out;
}

function unary(method, body, extra) {
  return new Promise((resolve) => {
    let headers = null;
    const call = client.makeUnaryRequest(path(method), raw.serialize, raw.deserialize,
      Buffer.from(body), md(extra), { deadline: deadline() },
      (err, value) => { if (err) resolve(outcome(err, [], null, null)); else call.value = value; });
    call.on('metadata', (m) => { headers = m; });
    call.on('status', (s) => { if (s.code === 0) resolve(outcome(null, [call.value], s.metadata, headers)); });
  });
}

function clientStream(bodies) {
  return new Promise((resolve) => {
    let headers = null; let value = null;
    const call = client.makeClientStreamRequest(path('ClientStream'), raw.serialize,
      raw.deserialize, md(), { deadline: deadline() },
      (err, v) => { if (err) resolve(outcome(err, [], null, null)); else value = v; });
    call.on('metadata', (m) => { headers = m; });
    call.on('status', (s) => { if (s.code === 0) resolve(outcome(null, [value], s.metadata, headers)); });
    for (const b of bodies) call.write(Buffer.from(b));
    call.end();
  });
}

function streaming(call) {
  return new Promise((resolve) => {
    const values = []; let headers = null;
    call.on('metadata', (m) => { headers = m; });
    call.on('data', (d) => values.push(d));
    call.on('error', (err) => resolve(outcome(err, values, null, null)));
    call.on('status', (s) => { if (s.code === 0) resolve(outcome(null, values, s.metadata, headers)); });
  });
}

async function main() {
  const results = {};
  results.unary = await unary('Unary', 'hello from js');
  results.client_stream = await clientStream(['a', 'b', 'c']);
  results.server_stream = await streaming(client.makeServerStreamRequest(
    path('ServerStream'), raw.serialize, raw.deserialize, Buffer.from('tick'),
    md({ 'x-test-repeat': '3' }), { deadline: deadline() }));
  const bidi = client.makeBidiStreamRequest(path('Bidi'), raw.serialize, raw.deserialize,
    md(), { deadline: deadline() });
  const bidiDone = streaming(bidi);
  for (const b of ['ping', 'pong']) bidi.write(Buffer.from(b));
  bidi.end();
  results.bidi = await bidiDone;
  results.app_error = await unary('Unary', 'fail', { 'x-test-fail-code': 'NOT_FOUND',
                                                     'x-test-fail-details': 'no such thing' });
  client.close();
  process.stdout.write(JSON.stringify(results) + '\n');
}

main().catch((e) => { console.error(e); process.exit(1); });
