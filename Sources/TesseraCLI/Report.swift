import ArgumentParser
import Foundation

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw a run's train and validation loss, tokens/s and, for MoE models, expert load; for a distillation, each stage's losses per layer (RUN_DIR/report.svg and report.html).")

    @Argument(help: "The run directory (holds metrics.jsonl).")
    var runDirectory: String

    func run() throws {
        let path = runDirectory + "/metrics.jsonl"
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw CommandLineError.metricsUnreadable(path: path)
        }
        if DistillReport.applies(to: text) { return try DistillReport.write(text: text, path: path, runDirectory: runDirectory) }
        var train: [(Double, Double)] = [], validation: [(Double, Double)] = [], speed: [(Double, Double)] = []
        var experts = ExpertLoadHistory()
        for (number, line) in text.split(separator: "\n").enumerated() {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let step = (object["step"] as? NSNumber)?.doubleValue else {
                throw CommandLineError.metricsLineInvalid(path: path, line: number + 1)
            }
            if let loss = (object["loss"] as? NSNumber)?.doubleValue { train.append((step, loss)) }
            if let loss = (object["val_loss"] as? NSNumber)?.doubleValue { validation.append((step, loss)) }
            if let rate = (object["tokens_per_s"] as? NSNumber)?.doubleValue { speed.append((step, rate)) }
            experts.add(object, step: step)
        }
        guard !train.isEmpty else { throw CommandLineError.metricsEmpty(path: path) }
        let svg = Chart.svg(title: "Tessera run \(URL(fileURLWithPath: runDirectory).lastPathComponent)",
                            panels: [Chart.Panel(label: "loss (nats/byte)", series: [("train", "#1f77b4", train), ("validation", "#d62728", validation)]),
                                     Chart.Panel(label: "tokens/s", series: [("tokens/s", "#2ca02c", speed)])] + experts.panels)
        try svg.write(toFile: runDirectory + "/report.svg", atomically: true, encoding: .utf8)
        let html = """
            <!doctype html><html><head><meta charset="utf-8"><title>Tessera report</title></head>
            <body style="font-family: sans-serif"><h1>\(runDirectory)</h1>\(svg)
            <p>Final train loss \(String(format: "%.4f", train.last!.1))\(validation.last.map { String(format: ", validation loss %.4f nats/byte (%.3f bits/byte)", $0.1, $0.1 / log(2)) } ?? "").</p>
            \(experts.table())</body></html>
            """
        try html.write(toFile: runDirectory + "/report.html", atomically: true, encoding: .utf8)
        print("wrote \(runDirectory)/report.svg and \(runDirectory)/report.html")
    }
}

/// Minimal line charts as SVG: one panel per quantity, shared step axis.
enum Chart {
    struct Panel {
        var label: String
        var series: [(name: String, color: String, points: [(Double, Double)])]
    }

    static func svg(title: String, panels: [Panel]) -> String {
        let width = 720.0, panelHeight = 260.0, left = 70.0, right = 20.0, top = 40.0, gap = 50.0
        let height = top + Double(panels.count) * (panelHeight + gap)
        let allSteps = panels.flatMap { $0.series.flatMap { $0.points.map(\.0) } }
        let minStep = allSteps.min() ?? 0, maxStep = max(allSteps.max() ?? 1, minStep + 1)
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"\(left)\" y=\"22\" font-size=\"16\">\(escape(title))</text>\n"
        for (index, panel) in panels.enumerated() {
            let y0 = top + Double(index) * (panelHeight + gap)
            let values = panel.series.flatMap { $0.points.map(\.1) }
            guard let low = values.min(), let high = values.max() else { continue }
            let span = max(high - low, 1e-9), lo = low - 0.05 * span, hi = high + 0.05 * span
            let x = { (s: Double) in left + (s - minStep) / (maxStep - minStep) * (width - left - right) }
            let y = { (v: Double) in y0 + panelHeight - (v - lo) / (hi - lo) * panelHeight }
            out += "<rect x=\"\(left)\" y=\"\(y0)\" width=\"\(width - left - right)\" height=\"\(panelHeight)\" fill=\"none\" stroke=\"#999\"/>\n"
            for k in 0...4 {
                let v = lo + Double(k) / 4 * (hi - lo)
                out += "<text x=\"\(left - 6)\" y=\"\(y(v) + 4)\" text-anchor=\"end\">\(String(format: v >= 100 ? "%.0f" : "%.3f", v))</text>\n"
                let s = minStep + Double(k) / 4 * (maxStep - minStep)
                out += "<text x=\"\(x(s))\" y=\"\(y0 + panelHeight + 16)\" text-anchor=\"middle\">\(Int(s))</text>\n"
            }
            out += "<text x=\"\(left)\" y=\"\(y0 - 6)\">\(escape(panel.label)) vs step</text>\n"
            for (n, series) in panel.series.enumerated() where !series.points.isEmpty {
                let path = series.points.map { String(format: "%.1f,%.1f", x($0.0), y($0.1)) }.joined(separator: " ")
                out += "<polyline fill=\"none\" stroke=\"\(series.color)\" stroke-width=\"1.5\" points=\"\(path)\"/>\n"
                out += "<text x=\"\(width - right - 110)\" y=\"\(y0 + 16 + Double(n) * 16)\" fill=\"\(series.color)\">\(escape(series.name))</text>\n"
            }
        }
        return out + "</svg>\n"
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
