/** A mount as the API carries it (containerd.types.Mount). */
export interface Mount {
  type: string;
  source: string;
  target?: string;
  options: string[];
}
