// Types for the two undici modules transport.ts loads instead of the package's entry: the
// package ships types for its entry only. These are the same classes and function the entry
// re-exports (index.js: `Agent`, and `request` before it is wrapped to take a URL).
declare module "undici/lib/dispatcher/agent.js" {
  import type { Agent } from "undici";

  const agent: typeof Agent;
  export default agent;
}

declare module "undici/lib/api/api-request.js" {
  import type { Dispatcher } from "undici";

  const request: (this: Dispatcher, opts: Dispatcher.RequestOptions) => Promise<Dispatcher.ResponseData>;
  export default request;
}
