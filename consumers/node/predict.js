#!/usr/bin/env node
// Runs the exported rarespecies model in Node.js with onnxruntime-node, as a downstream user
// would: no Python, no TensorFlow. It reads uint8 NHWC pixels from a .npy file (what
// `dvc repro preprocess` leaves in artifacts/export/test_x.npy), so the pixels are the very ones
// Python's onnxruntime is fed, and writes the probabilities as a float32 .npy file.
//
//   node consumers/node/predict.js MODEL.onnx PIXELS.npy OUT.npy [--batch N]
//
// Exit 0 on success; 1 with one line on stderr naming the file and the problem otherwise.
'use strict';

const fs = require('fs');
const ort = require('onnxruntime-node');

const NPY_MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // "\x93NUMPY"

/**
 * Reads a C-ordered uint8 .npy file (format versions 1 to 3).
 * @param {string} path the .npy file.
 * @returns {{shape: number[], data: Uint8Array}} its shape and bytes.
 */
function readNpyUint8(path) {
  const buf = fs.readFileSync(path);
  if (buf.length < 10 || !buf.subarray(0, 6).equals(NPY_MAGIC)) {
    throw new Error(`${path}: not a .npy file`);
  }
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.subarray(start, start + headerLen).toString('latin1');
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw new Error(`${path}: unreadable .npy header ${header}`);
  if (descr[1] !== '|u1' || fortran[1] !== 'False') {
    throw new Error(`${path}: expected C-ordered uint8 pixels, got ${descr[1]} ` +
                    `(fortran_order ${fortran[1]}); save them with np.ascontiguousarray(x, np.uint8)`);
  }
  const dims = shape[1].split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  const offset = start + headerLen;
  const data = new Uint8Array(buf.buffer, buf.byteOffset + offset, buf.length - offset);
  const expected = dims.reduce((a, b) => a * b, 1);
  if (data.length !== expected) throw new Error(`${path}: ${data.length} bytes for shape ${dims}`);
  return { shape: dims, data };
}

/**
 * Writes a float32 C-ordered .npy file (format 1.0).
 * @param {string} path where to write.
 * @param {number[]} shape the array's shape.
 * @param {Float32Array} values the values, row-major.
 */
function writeNpyFloat32(path, shape, values) {
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(', ');
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${dims}), }`;
  // The header (with magic, version and length) is padded to a multiple of 64 bytes.
  const pad = 64 - ((10 + header.length + 1) % 64);
  header = header + ' '.repeat(pad % 64) + '\n';
  const head = Buffer.alloc(10);
  NPY_MAGIC.copy(head, 0);
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  const body = Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  fs.writeFileSync(path, Buffer.concat([head, Buffer.from(header, 'latin1'), body]));
}

/**
 * Classifies every image of a uint8 [N, H, W, 3] array in batches.
 * @param {string} modelPath the ONNX model (input `pixels`, output `probabilities`).
 * @param {{shape: number[], data: Uint8Array}} pixels the images.
 * @param {number} batch images per run.
 * @returns {Promise<{shape: number[], data: Float32Array}>} the probabilities, [N, classes].
 */
async function predict(modelPath, pixels, batch) {
  const session = await ort.InferenceSession.create(modelPath, {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
  });
  const [n, ...image] = pixels.shape;
  const perImage = image.reduce((a, b) => a * b, 1);
  const chunks = [];
  let classes = 0;
  for (let i = 0; i < n; i += batch) {
    const m = Math.min(batch, n - i);
    const slice = pixels.data.subarray(i * perImage, (i + m) * perImage);
    const input = new ort.Tensor('uint8', slice, [m, ...image]);
    const output = await session.run({ [session.inputNames[0]]: input });
    const probabilities = output[session.outputNames[0]];
    classes = probabilities.dims[1];
    chunks.push(Float32Array.from(probabilities.data));
  }
  const data = new Float32Array(n * classes);
  let at = 0;
  for (const chunk of chunks) {
    data.set(chunk, at);
    at += chunk.length;
  }
  return { shape: [n, classes], data };
}

async function main(argv) {
  const args = argv.slice(2);
  let batch = 8;
  const at = args.indexOf('--batch');
  if (at >= 0) {
    batch = Number(args[at + 1]);
    args.splice(at, 2);
  }
  if (args.length !== 3 || !(batch >= 1)) {
    process.stderr.write('usage: node consumers/node/predict.js MODEL.onnx PIXELS.npy OUT.npy ' +
                         '[--batch N]\n');
    return 2;
  }
  const [modelPath, pixelsPath, outPath] = args;
  const pixels = readNpyUint8(pixelsPath);
  const result = await predict(modelPath, pixels, batch);
  writeNpyFloat32(outPath, result.shape, result.data);
  process.stdout.write(`${modelPath}: ${result.shape[0]} images, ${result.shape[1]} classes, ` +
                       `onnxruntime-node ${require('onnxruntime-node/package.json').version}\n`);
  return 0;
}

if (require.main === module) {
  main(process.argv).then(
    (code) => { process.exitCode = code; },
    (error) => {
      process.stderr.write(`error: ${error.message.split('\n')[0]}\n`);
      process.exitCode = 1;
    },
  );
}

module.exports = { readNpyUint8, writeNpyFloat32, predict };
