/// The layers a distilled student keeps as attention (`distill.keep_attention`): layer indices
/// counting from 0, comma-separated ("0,2"), or the empty string for none.
public struct DistillLayerList: Equatable, Sendable, CustomStringConvertible {
    /// Distinct, ascending.
    public let layers: [Int]

    /// Parses "", "1", "0,2", " 2 , 0 " (spaces ignored, order and repeats normalised); nil for
    /// anything else (a negative or non-integer entry, an empty entry such as "1,,2").
    public init?(_ text: String) {
        let trimmed = text.filter { !$0.isWhitespace }
        if trimmed.isEmpty { layers = []; return }
        var found: Set<Int> = []
        for entry in trimmed.split(separator: ",", omittingEmptySubsequences: false) {
            guard let layer = Int(entry), layer >= 0 else { return nil }
            found.insert(layer)
        }
        layers = found.sorted()
    }

    public init(layers: [Int]) { self.layers = Array(Set(layers)).sorted() }

    /// The canonical text ("", "0,2"), as run.yaml holds it.
    public var description: String { layers.map(String.init).joined(separator: ",") }
}
