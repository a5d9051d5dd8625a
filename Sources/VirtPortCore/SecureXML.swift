internal import CLibXML2

/// An element copied out of libxml2's tree into plain Swift values, so that no C pointer
/// outlives the parse. Domain XML is a few KiB; the copy costs microseconds.
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
    /// element, so 100,000 attributes on one element cost it ~100 s.
    static let maxAttributesPerElement = 256
    /// Most namespace declarations (`xmlns`, `xmlns:p`) in a document: libxml2 looks a prefix up
    /// by walking every declaration in scope, for every prefixed element and attribute.
    static let maxNamespaceDeclarations = 256
    /// Most elements and attributes copied out of libxml2's tree (only the parts a caller keeps
    /// are copied; this bounds what the Swift side can be made to allocate and walk).
    static let maxCopiedNodes = 100_000

    /// Parses `bytes` and returns the root element.
    /// - Parameters:
    ///   - what: names the input in messages ("domain XML", "network XML").
    ///   - keep: whether to copy element `child` of element `parent` (local names and namespace
    ///     URIs); what is not kept is not copied, nor anything below it. The whole document is
    ///     parsed (and checked) either way: this only spares copying the parts the caller never
    ///     reads (a domain's disks, CPU model, other applications' metadata, …).
    /// - Throws: `VirtPortError.invalid` with one line: empty, oversize, too many attributes or
    ///   namespace declarations, DOCTYPE, first parse error, too many nodes kept.
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

        let state = ParseState()
        let result: Result<ParsedElement, VirtPortError> = withExtendedLifetime(state) {
            bytes.withUnsafeBufferPointer { buf in
                buf.withMemoryRebound(to: CChar.self) { chars in
                    parse(chars, state: state, what: what, keep: keep)
                }
            }
        }
        return try result.get()
    }

    /// An element's local name and namespace URI, for `keep`.
    struct Name {
        var local: String
        var namespace: String?
    }

    private static func parse(_ chars: UnsafeBufferPointer<CChar>, state: ParseState, what: String,
                              keep: (Name, Name) -> Bool) -> Result<ParsedElement, VirtPortError> {
        guard let ctxt = xmlCreateMemoryParserCtxt(chars.baseAddress, Int32(chars.count)) else {
            return .failure(.operational("\(what): libxml2 could not create a parser context"))
        }
        // NONET: never fetch anything; NOERROR/NOWARNING: no printing. Deliberately absent:
        // NOENT (entity substitution), DTDLOAD, DTDATTR, XINCLUDE, HUGE (keeps libxml2's limits).
        let options = XML_PARSE_NONET.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue
        xmlCtxtUseOptions(ctxt, Int32(options))
        ctxt.pointee._private = Unmanaged.passUnretained(state).toOpaque()
        if let sax = ctxt.pointee.sax {
            sax.pointee.serror = recordError
            sax.pointee.internalSubset = refuseDoctype
            sax.pointee.entityDecl = refuseEntityDecl
        }
        _ = xmlParseDocument(ctxt)
        let doc = ctxt.pointee.myDoc
        ctxt.pointee.myDoc = nil
        let wellFormed = ctxt.pointee.wellFormed != 0
        xmlFreeParserCtxt(ctxt)
        defer { if let doc { xmlFreeDoc(doc) } }

        if let refused = state.refused {
            return .failure(.invalid("\(what): line \(refused.line): \(refused.what) is refused (libvirt XML never declares a DTD or entities)"))
        }
        if let error = state.firstError {
            return .failure(.invalid("\(what): malformed XML at line \(error.line): \(error.message)"))
        }
        guard wellFormed, let doc, let root = xmlDocGetRootElement(doc) else {
            return .failure(.invalid("\(what): malformed XML: no root element"))
        }
        var budget = maxCopiedNodes
        let element = copy(root, name: root.pointee.name.map { String(cString: $0) } ?? "", keep: keep, budget: &budget)
        if budget < 0 {
            return .failure(.invalid("\(what): more than \(maxCopiedNodes) elements and attributes where virtport reads (its metadata, the interfaces)"))
        }
        return .success(element)
    }

    /// Copies `node`; `budget` counts down per element and attribute, and once below zero
    /// nothing more is copied (the caller then refuses the document).
    private static func copy(_ node: xmlNodePtr, name: String, keep: (Name, Name) -> Bool,
                             budget: inout Int) -> ParsedElement {
        var element = ParsedElement(
            name: name,
            namespace: node.pointee.ns?.pointee.href.map { String(cString: $0) },
            prefix: node.pointee.ns?.pointee.prefix.map { String(cString: $0) },
            attributes: [], children: [], text: "", line: Int(xmlGetLineNo(node)))
        budget -= 1
        var attr = node.pointee.properties
        while let a = attr {
            budget -= 1
            if budget < 0 { return element }
            let value = xmlNodeGetContent(UnsafeMutableRawPointer(a).assumingMemoryBound(to: xmlNode.self))
            element.attributes.append(.init(
                name: a.pointee.name.map { String(cString: $0) } ?? "",
                namespace: a.pointee.ns?.pointee.href.map { String(cString: $0) },
                value: value.map { String(cString: $0) } ?? ""))
            vp_xml_free(value)
            attr = a.pointee.next
        }
        var child = node.pointee.children
        while let c = child {
            switch c.pointee.type {
            case XML_ELEMENT_NODE:
                // Children looked at count too, kept or not: 900,000 <x/> inside an <interface>
                // would otherwise cost a name copy each.
                budget -= 1
                if budget < 0 { return element }
                let childName = c.pointee.name.map { String(cString: $0) } ?? ""
                let child = Name(local: childName, namespace: c.pointee.ns?.pointee.href.map { String(cString: $0) })
                if keep(Name(local: name, namespace: element.namespace), child) {
                    element.children.append(copy(c, name: childName, keep: keep, budget: &budget))
                }
            case XML_TEXT_NODE, XML_CDATA_SECTION_NODE:
                // Indentation between elements is dropped (no reader wants it; it was most of the copy).
                if xmlIsBlankNode(c) == 0, let content = c.pointee.content { element.text += String(cString: content) }
            default: break
            }
            child = c.pointee.next
        }
        return element
    }
}

/// What the callbacks of one parse found; reached through the context's `_private`.
private final class ParseState {
    struct Found {
        var line: Int
        var message: String
    }
    var firstError: Found?
    var refused: (line: Int, what: String)?

    static func of(_ ctx: UnsafeMutableRawPointer?) -> (ParseState, xmlParserCtxtPtr)? {
        guard let ctxt = ctx?.assumingMemoryBound(to: xmlParserCtxt.self),
              let state = ctxt.pointee._private else { return nil }
        return (Unmanaged<ParseState>.fromOpaque(state).takeUnretainedValue(), ctxt)
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

/// Structured error handler of the parse context: keeps the first error, prints nothing.
private func recordError(_ ctx: UnsafeMutableRawPointer?, _ error: xmlErrorPtr?) {
    guard let error, error.pointee.level.rawValue >= XML_ERR_ERROR.rawValue,
          let (state, _) = ParseState.of(ctx), state.firstError == nil else { return }
    var message = error.pointee.message.map { String(cString: $0) } ?? "error \(error.pointee.code)"
    while message.last == "\n" || message.last == " " { message.removeLast() }
    // libxml2 quotes names and text from the input in its messages.
    message = Quoted.message(message, limit: 200)
    state.firstError = .init(line: Int(error.pointee.line), message: message)
}

/// `<!DOCTYPE …>` seen: stop before libxml2 reads its internal subset (billion laughs, XXE).
private func refuseDoctype(_ ctx: UnsafeMutableRawPointer?, _ name: UnsafePointer<xmlChar>?,
                           _ externalID: UnsafePointer<xmlChar>?, _ systemID: UnsafePointer<xmlChar>?) {
    refuse(ctx, "<!DOCTYPE>")
}

private func refuseEntityDecl(_ ctx: UnsafeMutableRawPointer?, _ name: UnsafePointer<xmlChar>?, _ type: Int32,
                              _ publicID: UnsafePointer<xmlChar>?, _ systemID: UnsafePointer<xmlChar>?,
                              _ content: UnsafeMutablePointer<xmlChar>?) {
    refuse(ctx, "<!ENTITY>")
}

private func refuse(_ ctx: UnsafeMutableRawPointer?, _ what: String) {
    guard let (state, ctxt) = ParseState.of(ctx) else { return }
    if state.refused == nil {
        state.refused = (Int(ctxt.pointee.input?.pointee.line ?? 0), what)
    }
    xmlStopParser(ctxt)
}
