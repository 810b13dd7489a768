// Preload (`node --require loopback.cjs server.js ...`) that pins every TCP
// listen() of a third-party server to 127.0.0.1 on an ephemeral port, so a
// test never binds all interfaces nor a fixed port.
//
// When the first server is listening it prints `LISTENING 127.0.0.1:PORT` on
// stderr and, if READY_FILE is set, writes {"listen":"127.0.0.1:PORT","pid":N}
// there atomically (write a temporary file, then rename), the same ready-file
// shape tollgate uses.
"use strict";
const net = require("node:net");
const fs = require("node:fs");

const originalListen = net.Server.prototype.listen;
let announced = false;

function announce(server) {
  if (announced) return;
  const addr = server.address();
  if (!addr || typeof addr === "string") return;
  announced = true;
  const listen = `127.0.0.1:${addr.port}`;
  process.stderr.write(`LISTENING ${listen}\n`);
  const readyFile = process.env.READY_FILE;
  if (readyFile) {
    const tmp = `${readyFile}.tmp.${process.pid}`;
    fs.writeFileSync(tmp, JSON.stringify({ listen, pid: process.pid }));
    fs.renameSync(tmp, readyFile);
  }
}

net.Server.prototype.listen = function (...args) {
  // A Unix socket or pipe (a path, or {path}; e.g. tsx's IPC server) is left as it is and not
  // announced: it is not the server's port.
  const a = args[0];
  const isPath = (typeof a === "string" && !/^\d+$/.test(a)) || (a && typeof a === "object" && a.path !== undefined);
  if (isPath) return originalListen.apply(this, args);
  // Keep only the callback; every other shape of listen() becomes port 0 on loopback.
  const callback = typeof args[args.length - 1] === "function" ? args.pop() : undefined;
  this.once("listening", () => announce(this));
  return callback
    ? originalListen.call(this, { port: 0, host: "127.0.0.1" }, callback)
    : originalListen.call(this, { port: 0, host: "127.0.0.1" });
};
