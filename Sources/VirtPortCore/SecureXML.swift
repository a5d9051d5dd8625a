internal import CLibXML2

/// An element built from libxml2's SAX2 callbacks as plain Swift values (no C pointer outlives
/// the parse, and libxml2 never builds a tree). Only the elements a caller keeps are built.
struct ParsedElement: Sendable {
    struct Attribute: Sendable {
        var name: String
        /// Namespace URI, nil for an unqualified attribute.
        var namespace: String?
        var value: String
    }

    /// Local name, without prefix.
    var name: String
    /// Namespace URI (never the prefix: libvirt re-prefixes metadata).
    var namespace: String?
    var prefix: String?
    var attributes: [Attribute]
    var children: [ParsedElement]
    /// Concatenated text and CDATA children (not descendants).
    var text: String
    /// Line of the start tag (where libxml2 finished reading it).
    var line: Int

    /// Element children with this local name and namespace (nil: no namespace).
    func children(_ name: String, namespace: String? = nil) -> [ParsedElement] {
        children.filter { $0.name == name && $0.namespace == namespace }
    }

    func child(_ name: String, namespace: String? = nil) -> ParsedElement? {
        children.first { $0.name == name && $0.namespace == namespace }
    }

    /// Value of the unqualified attribute `name`.
    func attribute(_ name: String) -> String? {
        attributes.first { $0.name == name && $0.namespace == nil }?.value
    }

    /// Text content with surrounding XML white space removed.
    var trimmedText: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        guard let first = text.firstIndex(where: { !isSpace($0) }),
              let last = text.lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(text[first...last])
    }

    /// `prefix:name` as written, for messages about elements of other documents.
    var qualifiedName: String { prefix.map { "\($0):\(name)" } ?? name }
}

/// libxml2 configured for hostile input: no DTD, no entities, no network, bounded size, no
/// output on stderr, the first error reported as one line.
enum SecureXML {
    /// Largest input accepted. libvirt domain XML is a few KiB; its status file some tens.
    static let maxInputBytes = 4 << 20
    /// Most attributes (namespace declarations included) on one element. libvirt's elements have
    /// a dozen at most; libxml2 2.9 checks each new attribute against all earlier ones of the
    /// element, so 100,000 attributes on one element cost it ~100 s, and 4 MiB of elements with
    /// 255 each still ~130 ms (64: under 100 ms).
    static let maxAttributesPerElement = 64
    /// Most namespace declarations (`xmlns`, `xmlns:p`) in a document: libxml2 looks a prefix up
    /// by walking every declaration in scope, for every prefixed element and attribute (250 in
    /// scope × 600,000 prefixed elements: ~170 ms; 32: under 100 ms). libvirt writes one per
    /// metadata application.
    static let maxNamespaceDeclarations = 32
    /// Most elements and attributes built where a caller reads (the elements it keeps, their
    /// attributes, and every child element of a kept element, kept or not): this bounds what the
    /// Swift side can be made to allocate and walk. The parse stops as soon as it is passed.
    static let maxCopiedNodes = 100_000

    /// Parses `bytes` and returns the root element.
    ///
    /// libxml2 parses through its SAX2 interface and never builds a tree: `SAXBuilder` builds a
    /// `ParsedElement` for the root and for each element `keep` admits below a kept element.
    /// Everything else costs only libxml2's tokenizer (which still checks it).
    /// - Parameters:
    ///   - what: names the input in messages ("domain XML", "network XML").
    ///   - keep: whether to build element `child` of kept element `parent` (local names and
    ///     namespace URIs); what is not kept is not built, nor anything below it. The document
    ///     is checked to its end all the same (well-formedness, namespaces, DOCTYPE), so an error
    ///     inside a part nobody reads is still reported, with its line.
    /// - Throws: `VirtPortError.invalid` with one line: empty, oversize, too many attributes or
    ///   namespace declarations, DOCTYPE, first parse error, too many nodes where the caller reads.
    ///   The parse stops at the first of these, so a document over the node budget is refused
    ///   for that even if it is also malformed further on.
    static func parse(_ bytes: [UInt8], what: String,
                      keep: (_ parent: Name, _ child: Name) -> Bool = { _, _ in true }) throws(VirtPortError) -> ParsedElement {
        guard !bytes.isEmpty else { throw .invalid("\(what): input is empty") }
        guard bytes.count <= maxInputBytes else {
            throw .invalid("\(what): input is \(bytes.count) bytes, over the limit of \(maxInputBytes) bytes")
        }
        try MarkupScan.check(bytes, what: what, maxAttributes: maxAttributesPerElement,
                             maxNamespaceDeclarations: maxNamespaceDeclarations)
        _ = libxmlReady
        vp_xml_silence_generic_errors()

        let result = bytes.withUnsafeBufferPointer { buf in
            buf.withMemoryRebound(to: CChar.self) { chars in
                SAXBuilder.parse(chars, what: what, budget: maxCopiedNodes, keep: keep)
            }
        }
        return try result.get()
    }

    /// An element's local name and namespace URI, for `keep`.
    struct Name {
        var local: String
        var namespace: String?
    }
}

/// Process-wide libxml2 setup, done once: initialise the library for threads and install an
/// external entity loader that refuses everything (defence in depth: no DTD gets that far).
private let libxmlReady: Bool = {
    xmlInitParser()
    xmlSetExternalEntityLoader(refuseExternalEntity)
    return true
}()

/// Returns nothing for every URL. It must not read the context's `_private`: the loader is
/// process-wide, and libvirt (loaded by the agent) parses with its own `_private`.
private func refuseExternalEntity(_ url: UnsafePointer<CChar>?, _ id: UnsafePointer<CChar>?,
                                  _ ctxt: xmlParserCtxtPtr?) -> xmlParserInputPtr? {
    nil
}
