import { errInvalidArgument } from "./errdefs.js";

// containerd's identifier rule, used for namespaces, leases and container ids.
const MAX_LENGTH = 76;
const IDENTIFIER = /^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$/;

export function validateIdentifier(s: string): void {
  if (s.length === 0) throw errInvalidArgument("identifier must not be empty");
  if (s.length > MAX_LENGTH)
    throw errInvalidArgument(
      `identifier ${JSON.stringify(s)} greater than maximum length (${MAX_LENGTH} characters)`,
    );
  if (!IDENTIFIER.test(s))
    throw errInvalidArgument(`identifier ${JSON.stringify(s)} must match ${IDENTIFIER.source}`);
}
