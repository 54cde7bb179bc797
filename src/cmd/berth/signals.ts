// Signals for the task commands: names and numbers as ctr reads them, and forwarding the signals
// berth receives to a task's process while it waits for it.
import os from "node:os";

/** Signal name or number → number ("SIGKILL", "KILL", "9"). */
export function parseSignal(s: string): number {
  if (/^\d+$/.test(s)) return Number(s);
  const name = s.toUpperCase().startsWith("SIG") ? s.toUpperCase() : `SIG${s.toUpperCase()}`;
  const n = (os.constants.signals as Record<string, number>)[name];
  if (n === undefined) throw new Error(`invalid signal ${JSON.stringify(s)}`);
  return n;
}

/** Forward our termination signals to a task process; returns the undo. */
export function forwardSignals(kill: (signal: number) => Promise<unknown>): () => void {
  const sigs: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"];
  const handlers = sigs.map((s) => {
    const h = () => {
      kill(os.constants.signals[s]).catch(() => {});
    };
    process.on(s, h);
    return [s, h] as const;
  });
  return () => {
    for (const [s, h] of handlers) process.off(s, h);
  };
}
