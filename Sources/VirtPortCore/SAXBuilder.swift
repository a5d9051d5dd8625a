internal import CLibXML2

/// Builds `ParsedElement`s straight from libxml2's SAX2 callbacks, without a libxml2 tree.
///
/// Only the root and the elements `keep` admits below a kept element are built. A child that is
/// not kept opens a skipped subtree: until its end tag the callbacks only count depth, so the
/// bulk of a hostile document (another application's metadata, elements nobody reads) costs
/// libxml2's tokenizer and nothing else. libxml2 still checks all of it, and the first error
/// anywhere is reported with its line.
///
/// What is built is what the tree copy it replaces produced: an element's `text` is the
/// concatenation of its text and CDATA runs that are not all white space, where a run is what
/// libxml2's tree would have made one node (adjacent character data of one kind, broken by
/// elements, comments and processing instructions); attribute values are decoded as the tree's
/// attribute content was.
///
/// The state lives in memory allocated for one parse and reached through the parser context's
/// `_private` (the context is the callbacks' user data): no reference counting per callback.
struct SAXBuilder {
    let keep: (SecureXML.Name, SecureXML.Name) -> Bool
    /// The kept elements open at this point, root first.
    var stack: [ParsedElement] = []
    /// Open elements inside a skipped subtree (0: the parser is where `stack.last` reads).
    var skipDepth = 0
    /// Character data of the current run of `stack.last`, not yet judged blank or not.
    var run: [UInt8] = []
    var runIsCDATA = false
    /// Counts down per element built, attribute built and child element looked at.
    var budget: Int
    var overBudget = false
    var root: ParsedElement?
    var firstError: (line: Int, message: String)?
    var refused: (line: Int, what: String)?
    /// libxml2 interns local names and namespace URIs in the context's dictionary: for the whole
    /// parse, the same pointer is the same string. Consecutive elements of one namespace share
    /// one String, and the `keep` decision for a run of like siblings is made once.
    var lastURI: UnsafePointer<xmlChar>?
    var lastURIString: String?
    /// The interned local name and URI of each element of `stack`.
    var keys: [Key] = []
    var lastDecision: (parent: Key, child: Key, kept: Bool)?

    struct Key: Equatable {
        var local: UnsafePointer<xmlChar>?
        var uri: UnsafePointer<xmlChar>?
    }

    /// Parses `chars` with SAX2 callbacks; the caller has checked size and markup counts.
    static func parse(_ chars: UnsafeBufferPointer<CChar>, what: String, budget: Int,
                      keep: (SecureXML.Name, SecureXML.Name) -> Bool) -> Result<ParsedElement, VirtPortError> {
        guard let ctxt = xmlCreateMemoryParserCtxt(chars.baseAddress, Int32(chars.count)) else {
            return .failure(.operational("\(what): libxml2 could not create a parser context"))
        }
        defer { xmlFreeParserCtxt(ctxt) }
        // NONET: never fetch anything; NOERROR/NOWARNING: no printing. Deliberately absent:
        // NOENT (entity substitution), DTDLOAD, DTDATTR, XINCLUDE, HUGE (keeps libxml2's limits).
        // NODICT and COMPACT only shape tree nodes, and no tree is built.
        let options = XML_PARSE_NONET.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue
        xmlCtxtUseOptions(ctxt, Int32(options))
        // After the options (they write some handler fields): our handler replaces the tree
        // builder's whole. No startDocument, so libxml2 never creates even the document node.
        guard let sax = ctxt.pointee.sax else {
            return .failure(.operational("\(what): libxml2 could not create a parser context"))
        }
        sax.pointee = handler()

        return withoutActuallyEscaping(keep) { keep in
            let state = UnsafeMutablePointer<SAXBuilder>.allocate(capacity: 1)
            state.initialize(to: SAXBuilder(keep: keep, budget: budget))
            defer {
                state.deinitialize(count: 1)
                state.deallocate()
            }
            ctxt.pointee._private = UnsafeMutableRawPointer(state)
            _ = xmlParseDocument(ctxt)
            ctxt.pointee._private = nil
            let wellFormed = ctxt.pointee.wellFormed != 0
            if let doc = ctxt.pointee.myDoc {  // never set without startDocument; defensive
                ctxt.pointee.myDoc = nil
                xmlFreeDoc(doc)
            }
            let s = state.pointee
            if let refused = s.refused {
                return .failure(.invalid("\(what): line \(refused.line): \(refused.what) is refused (libvirt XML never declares a DTD or entities)"))
            }
            if let error = s.firstError {
                return .failure(.invalid("\(what): malformed XML at line \(error.line): \(error.message)"))
            }
            if s.overBudget {
                return .failure(.invalid("\(what): more than \(SecureXML.maxCopiedNodes) elements and attributes where virtport reads (its metadata, the interfaces)"))
            }
            guard wellFormed, let root = s.root else {
                return .failure(.invalid("\(what): malformed XML: no root element"))
            }
            return .success(root)
        }
    }

    /// The callbacks: ours for elements, character data and their boundaries; the refusals; the
    /// structured error handler. Everything else (the tree builder's) stays unset.
    private static func handler() -> xmlSAXHandler {
        var h = xmlSAXHandler()
        h.initialized = UInt32(XML_SAX2_MAGIC)
        h.startElementNs = { ctx, localname, prefix, uri, _, _, nbAttributes, _, attributes in
            SAXBuilder.startElement(ctx, localname, prefix, uri, Int(nbAttributes), attributes)
        }
        h.endElementNs = { ctx, _, _, _ in SAXBuilder.endElement(ctx) }
        h.characters = { ctx, ch, len in SAXBuilder.characters(ctx, ch, len, cdata: false) }
        // Never called while characters is set to something else (libxml2 then cannot tell
        // ignorable white space without a DTD); set alike for certainty.
        h.ignorableWhitespace = h.characters
        h.cdataBlock = { ctx, ch, len in SAXBuilder.characters(ctx, ch, len, cdata: true) }
        h.comment = { ctx, _ in SAXBuilder.boundary(ctx) }
        h.processingInstruction = { ctx, _, _ in SAXBuilder.boundary(ctx) }
        h.internalSubset = { ctx, _, _, _ in SAXBuilder.refuse(ctx, "<!DOCTYPE>") }
        h.entityDecl = { ctx, _, _, _, _, _ in SAXBuilder.refuse(ctx, "<!ENTITY>") }
        h.serror = { ctx, error in SAXBuilder.recordError(ctx, error) }
        return h
    }

    // MARK: - Callbacks

    private static func state(_ ctx: UnsafeMutableRawPointer?) -> (UnsafeMutablePointer<SAXBuilder>, xmlParserCtxtPtr)? {
        guard let ctxt = ctx?.assumingMemoryBound(to: xmlParserCtxt.self),
              let state = ctxt.pointee._private else { return nil }
        return (state.assumingMemoryBound(to: SAXBuilder.self), ctxt)
    }

    /// A start tag. libxml2 has checked it (attribute uniqueness, namespaces) and stops calling
    /// after a fatal error; after a namespace error (not fatal) the parse is stopped here. This is
    /// the one place the parse is stopped from: libxml2 2.9 reads no input after this callback
    /// returns, while stopping from a character or error callback would leave it reading a freed
    /// buffer.
    private static func startElement(_ ctx: UnsafeMutableRawPointer?, _ localname: UnsafePointer<xmlChar>?,
                                     _ prefix: UnsafePointer<xmlChar>?, _ uri: UnsafePointer<xmlChar>?,
                                     _ nbAttributes: Int, _ attributes: UnsafeMutablePointer<UnsafePointer<xmlChar>?>?) {
        guard let (s, ctxt) = state(ctx) else { return }
        if s.pointee.firstError != nil {
            xmlStopParser(ctxt)
            return
        }
        if s.pointee.skipDepth > 0 {
            s.pointee.skipDepth += 1
            return
        }
        let line = Int(ctxt.pointee.input?.pointee.line ?? 0)
        if !s.pointee.start(localname, prefix, uri, nbAttributes, attributes, line: line) {
            s.pointee.overBudget = true
            xmlStopParser(ctxt)
        }
    }

    private static func endElement(_ ctx: UnsafeMutableRawPointer?) {
        guard let (s, _) = state(ctx) else { return }
        if s.pointee.skipDepth > 0 {
            s.pointee.skipDepth -= 1
            return
        }
        s.pointee.end()
    }

    private static func characters(_ ctx: UnsafeMutableRawPointer?, _ ch: UnsafePointer<xmlChar>?, _ len: Int32, cdata: Bool) {
        guard let (s, _) = state(ctx), s.pointee.skipDepth == 0, !s.pointee.stack.isEmpty,
              let ch, len > 0 else { return }
        if s.pointee.runIsCDATA != cdata {
            s.pointee.flush()
            s.pointee.runIsCDATA = cdata
        }
        s.pointee.run.append(contentsOf: UnsafeBufferPointer(start: ch, count: Int(len)))
    }

    /// A comment or processing instruction: in a tree it would separate two text nodes.
    private static func boundary(_ ctx: UnsafeMutableRawPointer?) {
        guard let (s, _) = state(ctx), s.pointee.skipDepth == 0 else { return }
        s.pointee.flush()
    }

    /// Structured error handler of the parse context: keeps the first error, prints nothing.
    private static func recordError(_ ctx: UnsafeMutableRawPointer?, _ error: xmlErrorPtr?) {
        guard let error, error.pointee.level.rawValue >= XML_ERR_ERROR.rawValue,
              let (s, _) = state(ctx), s.pointee.firstError == nil else { return }
        var message = error.pointee.message.map { String(cString: $0) } ?? "error \(error.pointee.code)"
        while message.last == "\n" || message.last == " " { message.removeLast() }
        // libxml2 quotes names and text from the input in its messages.
        message = Quoted.message(message, limit: 200)
        s.pointee.firstError = (Int(error.pointee.line), message)
    }

    /// `<!DOCTYPE …>` (or an entity declaration) seen: stop before libxml2 reads the internal
    /// subset (billion laughs, XXE).
    private static func refuse(_ ctx: UnsafeMutableRawPointer?, _ what: String) {
        guard let (s, ctxt) = state(ctx) else { return }
        if s.pointee.refused == nil {
            s.pointee.refused = (Int(ctxt.pointee.input?.pointee.line ?? 0), what)
        }
        xmlStopParser(ctxt)
    }

    // MARK: - Building

    /// A start tag outside any skipped subtree. Returns false once the budget is spent.
    private mutating func start(_ localname: UnsafePointer<xmlChar>?, _ prefix: UnsafePointer<xmlChar>?,
                                _ uri: UnsafePointer<xmlChar>?, _ nbAttributes: Int,
                                _ attributes: UnsafeMutablePointer<UnsafePointer<xmlChar>?>?, line: Int) -> Bool {
        let key = Key(local: localname, uri: uri)
        if let parent = stack.last, let parentKey = keys.last {
            // The parent's text run ends here, kept child or not.
            flush()
            // Children looked at count too, kept or not: 900,000 <x/> inside an <interface>
            // would otherwise cost a lookup each.
            budget -= 1
            if budget < 0 { return false }
            let kept: Bool
            if let last = lastDecision, last.parent == parentKey, last.child == key {
                kept = last.kept
            } else {
                kept = keep(SecureXML.Name(local: parent.name, namespace: parent.namespace),
                            SecureXML.Name(local: localname.map { String(cString: $0) } ?? "", namespace: namespaceString(uri)))
                lastDecision = (parentKey, key, kept)
            }
            guard kept else {
                skipDepth = 1
                return true
            }
        } else if root != nil {
            return true  // a second root element: libxml2 has already reported it
        }
        let name = localname.map { String(cString: $0) } ?? ""
        let namespace = namespaceString(uri)
        var element = ParsedElement(name: name, namespace: namespace, prefix: prefix.map { String(cString: $0) },
                                    attributes: [], children: [], text: "", line: line)
        budget -= 1
        if budget < 0 { return false }
        if nbAttributes > 0, let attributes {
            element.attributes.reserveCapacity(nbAttributes)
            // Five pointers per attribute: local name, prefix, URI, value, end of value.
            for i in 0..<nbAttributes {
                budget -= 1
                if budget < 0 { return false }
                let a = attributes + 5 * i
                guard let value = a[3], let end = a[4] else { continue }
                element.attributes.append(.init(name: a[0].map { String(cString: $0) } ?? "",
                                                namespace: a[2].map { String(cString: $0) },
                                                value: Self.attributeValue(UnsafeBufferPointer(start: value, count: end - value))))
            }
        }
        stack.append(element)
        keys.append(key)
        return true
    }

    /// The end tag of `stack.last`.
    private mutating func end() {
        guard !stack.isEmpty else { return }
        flush()
        let element = stack.removeLast()
        keys.removeLast()
        if stack.isEmpty {
            root = element
        } else {
            stack[stack.count - 1].children.append(element)
        }
    }

    /// Ends the current character run: a run of XML white space only is dropped (indentation;
    /// what the tree copy dropped as a blank node), anything else joins the element's text.
    private mutating func flush() {
        guard !run.isEmpty else { return }
        if run.contains(where: { $0 != 0x20 && $0 != 0x09 && $0 != 0x0a && $0 != 0x0d }), !stack.isEmpty {
            stack[stack.count - 1].text += String(decoding: run, as: UTF8.self)
        }
        run.removeAll(keepingCapacity: true)
    }

    private mutating func namespaceString(_ uri: UnsafePointer<xmlChar>?) -> String? {
        guard let uri else { return nil }
        if uri != lastURI {
            lastURI = uri
            lastURIString = String(cString: uri)
        }
        return lastURIString
    }

    /// An attribute value as SAX2 delivers it. Without entity substitution (NOENT stays off)
    /// libxml2 hands a `&` written as `&amp;` or `&#38;` over as the five bytes `&#38;`, for the
    /// tree builder to decode; every other reference is already replaced, and a literal `&`
    /// cannot occur. So `&#38;` is the one sequence to decode.
    static func attributeValue(_ bytes: UnsafeBufferPointer<UInt8>) -> String {
        let amp = UInt8(ascii: "&")
        guard bytes.contains(amp) else { return String(decoding: bytes, as: UTF8.self) }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            if bytes[i] == amp, i + 4 < bytes.count, bytes[i + 1] == UInt8(ascii: "#"), bytes[i + 2] == UInt8(ascii: "3"),
               bytes[i + 3] == UInt8(ascii: "8"), bytes[i + 4] == UInt8(ascii: ";") {
                out.append(amp)
                i += 5
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
