// Decode zpandas messages with nothing but apache-arrow and docs/wire.md.
// Input: a JSON file of messages, each [topic, header, body] base64-encoded.
// Output (stdout): one JSON line per message: its header fields and its rows as arrays.
import { readFileSync } from "node:fs";
import { tableFromIPC, compressionRegistry, CompressionType } from "apache-arrow";
import lz4 from "lz4js";
import { decompress as unzstd } from "fzstd";

// Compressed bodies: Arrow JS reads them once the codecs are registered (docs/wire.md).
compressionRegistry.set(CompressionType.LZ4_FRAME, { decode: (data) => Uint8Array.from(lz4.decompress(data)) });
// (copies: Arrow JS views a decompressed buffer in place, so it must start 8-aligned)
compressionRegistry.set(CompressionType.ZSTD, { decode: (data) => new Uint8Array(unzstd(data)) });

const messages = JSON.parse(readFileSync(process.argv[2], "utf8"));
for (const [topicB64, headerB64, bodyB64] of messages) {
  const header = Buffer.from(headerB64, "base64");
  const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
  const out = {
    topic: Buffer.from(topicB64, "base64").toString("utf8"),
    magic: header.subarray(0, 2).toString("latin1"),
    version: header[2],
    kind: header[3],
    seq: Number(view.getBigUint64(20, true)),
    total: Number(view.getBigUint64(36, true)),
    rows: Number(view.getBigUint64(52, true)),
    name: header.subarray(80, 80 + view.getUint16(76, true)).toString("utf8"),
  };
  // A fresh, 8-aligned copy: Arrow JS views buffers in place (Node pools small Buffers).
  const body = new Uint8Array(Buffer.from(bodyB64, "base64"));
  if (body.length) {
    const table = tableFromIPC(body);
    out.columns = {};
    for (const field of table.schema.fields) {
      out.columns[field.name] = Array.from(table.getChild(field.name).toArray(), (v) =>
        typeof v === "bigint" ? Number(v) : v);
    }
    out.num_rows = table.numRows;
  }
  console.log(JSON.stringify(out));
}
