/**
 * A small read-only element tree over fast-xml-parser, shared by the libvirt
 * XML readers (domain, checkpoint). libvirt documents are attribute-heavy
 * and order matters little, so an element here is just its name, its
 * attributes, its child elements in document order, and its text. Pure, no I/O.
 */
import { XMLBuilder, XMLParser, XMLValidator } from 'fast-xml-parser';

/** A document is not well-formed XML, or lacks what its reader needs. */
export class XmlDocumentError extends Error {
  override readonly name: string = 'XmlDocumentError';

  constructor(
    /** What the document is, for the message: "domain XML", "checkpoint file checkpoints/x.xml". */
    readonly source: string,
    readonly detail: string,
    readonly line?: number,
  ) {
    super(`${source}${line === undefined ? '' : ` (line ${line})`}: ${detail}`);
  }
}

export class XmlElement {
  constructor(
    readonly name: string,
    readonly attributes: Readonly<Record<string, string>>,
    readonly children: readonly XmlElement[],
    /** Text directly inside this element (trimmed pieces joined by a space). */
    readonly text: string,
  ) {}

  attr(name: string): string | undefined {
    return Object.prototype.hasOwnProperty.call(this.attributes, name) ? this.attributes[name] : undefined;
  }

  /** The first child element named `name`. */
  child(name: string): XmlElement | undefined {
    return this.children.find((c) => c.name === name);
  }

  /** All child elements named `name`, in document order. */
  all(name: string): XmlElement[] {
    return this.children.filter((c) => c.name === name);
  }

  /** Follow first children by name: `el.path('os', 'loader')`. */
  path(...names: string[]): XmlElement | undefined {
    let at: XmlElement | undefined = this;
    for (const n of names) at = at?.child(n);
    return at;
  }

  /** Text of the first child named `name`, undefined when absent or empty. */
  childText(name: string): string | undefined {
    const text = this.child(name)?.text;
    return text === undefined || text === '' ? undefined : text;
  }
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '',
  preserveOrder: true,
  parseTagValue: false,
  parseAttributeValue: false,
  ignoreDeclaration: true,
  ignorePiTags: true,
  // Numeric character references (&#38;) are valid XML; decode them too.
  htmlEntities: true,
});

type OrderedNode = Record<string, unknown>;

function toElement(node: OrderedNode): XmlElement | string | undefined {
  if (typeof node['#text'] === 'string' || typeof node['#text'] === 'number') return String(node['#text']);
  const name = Object.keys(node).find((k) => k !== ':@');
  if (name === undefined || name.startsWith('?') || name === '#comment') return undefined;
  const attributes: Record<string, string> = {};
  const rawAttrs = node[':@'];
  if (rawAttrs && typeof rawAttrs === 'object') {
    for (const [k, v] of Object.entries(rawAttrs as Record<string, unknown>)) attributes[k] = String(v);
  }
  const children: XmlElement[] = [];
  const texts: string[] = [];
  const content = node[name];
  if (Array.isArray(content)) {
    for (const c of content as OrderedNode[]) {
      const converted = toElement(c);
      if (typeof converted === 'string') {
        if (converted !== '') texts.push(converted);
      } else if (converted) {
        children.push(converted);
      }
    }
  }
  return new XmlElement(name, attributes, children, texts.join(' '));
}

/**
 * Parse a document and return its root element, checking that it is
 * well-formed and that the root is named `rootName`.
 */
export function parseXmlDocument(xml: string, source: string, rootName: string): XmlElement {
  if (typeof xml !== 'string' || xml.trim() === '') throw new XmlDocumentError(source, 'empty document');
  const valid = XMLValidator.validate(xml);
  if (valid !== true) throw new XmlDocumentError(source, `not well-formed XML: ${valid.err.msg}`, valid.err.line);
  const nodes = parser.parse(xml) as OrderedNode[];
  const roots = nodes.map(toElement).filter((n): n is XmlElement => n instanceof XmlElement);
  if (roots.length !== 1) throw new XmlDocumentError(source, `expected one root element, found ${roots.length}`);
  const root = roots[0];
  if (root.name !== rootName) throw new XmlDocumentError(source, `root element is <${root.name}>, expected <${rootName}>`);
  return root;
}

const builder = new XMLBuilder({
  ignoreAttributes: false,
  attributeNamePrefix: '@_',
  format: true,
  indentBy: '  ',
  suppressEmptyNode: true,
});

/** Serializes a fast-xml-parser object (attributes as `@_name`) under `rootName`, indented as libvirt writes XML. */
export function buildXmlDocument(rootName: string, content: Record<string, unknown>): string {
  return builder.build({ [rootName]: content }) as string;
}
