// Socket setup for the daemon's sockets; the code lives in src/sys/socket.ts, where the ttrpc
// events socket (opened by the runtime plugin) uses it too.
export { prepareSocketPath, secureSocket, socketIsLive } from "../../sys/socket.js";
