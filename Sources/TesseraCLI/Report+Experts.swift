import Foundation

/// The expert-load part of `tessera report`: what metrics.jsonl's `moe` entries (one per MoE
/// layer per logged step) show over time.
struct ExpertLoadHistory {
    /// Per MoE layer: (step, share of routed pairs per expert, dropped fraction).
    private(set) var layers: [Int: [(step: Double, load: [Double], dropped: Double)]] = [:]
    /// (step, Σ weighted auxiliary losses) of the steps that logged them.
    private(set) var auxiliary: [(Double, Double)] = []

    var isEmpty: Bool { layers.isEmpty }

    mutating func add(_ record: [String: Any], step: Double) {
        if let aux = (record["aux_loss"] as? NSNumber)?.doubleValue { auxiliary.append((step, aux)) }
        guard let entries = record["moe"] as? [[String: Any]] else { return }
        for entry in entries {
            guard let layer = (entry["layer"] as? NSNumber)?.intValue,
                  let load = (entry["load"] as? [NSNumber])?.map(\.doubleValue) else { continue }
            layers[layer, default: []].append((step, load, (entry["dropped"] as? NSNumber)?.doubleValue ?? 0))
        }
    }

    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                          "#bcbd22", "#17becf"]

    /// One chart panel per MoE layer (a line per expert), then the auxiliary loss.
    var panels: [Chart.Panel] {
        var out = layers.keys.sorted().map { layer -> Chart.Panel in
            let history = layers[layer]!
            let experts = history.map(\.load.count).max() ?? 0
            return Chart.Panel(label: "layer \(layer) expert load (share of routed pairs)", series: (0..<experts).map { e in
                ("expert \(e)", Self.palette[e % Self.palette.count], history.compactMap { e < $0.load.count ? ($0.step, $0.load[e]) : nil })
            })
        }
        if !auxiliary.isEmpty { out.append(Chart.Panel(label: "MoE auxiliary losses (weighted)", series: [("aux_loss", "#9467bd", auxiliary)])) }
        return out
    }

    /// An HTML table of the load per expert (percent of routed pairs) and the dropped share, at
    /// up to `rows` logged steps spread over the run (the last one included), per layer.
    func table(rows: Int = 12) -> String {
        guard !isEmpty else { return "" }
        var html = "<h2>Expert load over time</h2>\n<p>Share of each layer's routed (token, expert) pairs that each expert received "
            + "(perfect balance: \(layers.values.first?.first.map { String(format: "%.1f%%", 100 / Double(max($0.load.count, 1))) } ?? "")"
            + " each), and the share dropped by the capacity limit.</p>\n"
        for layer in layers.keys.sorted() {
            let history = layers[layer]!
            let experts = history.map(\.load.count).max() ?? 0
            let picks = Set((0..<min(rows, history.count)).map { i in
                history.count <= rows ? i : i * (history.count - 1) / max(rows - 1, 1)
            } + [history.count - 1])
            html += "<h3>layer \(layer)</h3>\n<table border=\"1\" cellpadding=\"3\" style=\"border-collapse: collapse\">\n<tr><th>step</th>"
            html += (0..<experts).map { "<th>expert \($0)</th>" }.joined() + "<th>dropped</th></tr>\n"
            for i in picks.sorted() {
                let row = history[i]
                html += "<tr><td>\(Int(row.step))</td>" + row.load.map { String(format: "<td>%.1f%%</td>", 100 * $0) }.joined()
                    + String(format: "<td>%.1f%%</td></tr>\n", 100 * row.dropped)
            }
            html += "</table>\n"
        }
        return html
    }
}
