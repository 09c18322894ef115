/**
 * Order-preserving XML editing (fast-xml-parser's preserveOrder mode), for
 * changing a domain XML while keeping everything else of it as written:
 * comments, element order, whitespace. A node is `{tag: Node[], ':@':
 * {'@_attr': value}}` or a text node `{'#text': ...}`.
 */
import { XMLBuilder, XMLParser, XMLValidator } from 'fast-xml-parser';

export type XmlNode = Record<string, unknown>;

const OPTIONS = {
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: '@_',
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: false,
  commentPropName: '#comment',
  processEntities: true,
  htmlEntities: true,
} as const;

const parser = new XMLParser(OPTIONS);
const builder = new XMLBuilder({ ...OPTIONS, format: false, suppressEmptyNode: true });

/** Parses a document; undefined-free validation error text when it is not well-formed. */
export function parseOrdered(xml: string): { tree: XmlNode[] } | { error: string } {
  const valid = XMLValidator.validate(xml);
  if (valid !== true) return { error: `line ${valid.err.line}: ${valid.err.msg}` };
  return { tree: parser.parse(xml) as XmlNode[] };
}

export function buildOrdered(tree: XmlNode[]): string {
  return builder.build(tree) as string;
}

export function tagOf(node: XmlNode): string | undefined {
  return Object.keys(node).find((k) => k !== ':@' && k !== '#text' && k !== '#comment');
}

export function children(node: XmlNode): XmlNode[] {
  const tag = tagOf(node);
  const content = tag === undefined ? undefined : node[tag];
  return Array.isArray(content) ? (content as XmlNode[]) : [];
}

/** The node's attribute map, created when missing (keys are `@_name`). */
export function attributes(node: XmlNode): Record<string, string> {
  let attrs = node[':@'] as Record<string, string> | undefined;
  if (!attrs) {
    attrs = {};
    node[':@'] = attrs;
  }
  return attrs;
}

export function attr(node: XmlNode, name: string): string | undefined {
  return (node[':@'] as Record<string, string> | undefined)?.[`@_${name}`];
}

export function child(node: XmlNode, tag: string): XmlNode | undefined {
  return children(node).find((c) => tagOf(c) === tag);
}

export function text(node: XmlNode): string {
  return children(node)
    .map((c) => (typeof c['#text'] === 'string' || typeof c['#text'] === 'number' ? String(c['#text']) : ''))
    .join('')
    .trim();
}

/** Removes `victim` from `list`, with the whitespace before it, so the indentation stays tidy. */
export function removeNode(list: XmlNode[], victim: XmlNode): void {
  const at = list.indexOf(victim);
  if (at < 0) return;
  const before = list[at - 1];
  const blank = before !== undefined && typeof before['#text'] === 'string' && before['#text'].trim() === '';
  list.splice(blank ? at - 1 : at, blank ? 2 : 1);
}
