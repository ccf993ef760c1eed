import Foundation

/// `tessera report` on a distillation run (metrics.jsonl records with a `stage`): per stage, the
/// losses over steps — one series per layer in stages 1 and 2, kd / data / total in stage 3 —
/// drawn in RUN_DIR/report.svg and report.html, and printed as one text line per series
/// (first and last value, a sparkline over the logged steps), with each stage's student
/// validation loss and tokens/s.
enum DistillReport {
    struct Stage {
        var series: [String: [(Double, Double)]] = [:]
        var speed: [(Double, Double)] = []
        var validation: Double?
    }

    /// Whether the metrics are a distillation's.
    static func applies(to text: String) -> Bool { text.contains("\"stage\":") }

    static func write(text: String, path: String, runDirectory: String) throws {
        var stages: [Int: Stage] = [:]
        var teacherValidation: Double?
        for (number, line) in text.split(separator: "\n").enumerated() {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let step = (object["step"] as? NSNumber)?.doubleValue else {
                throw CommandLineError.metricsLineInvalid(path: path, line: number + 1)
            }
            if let loss = (object["teacher_val_loss"] as? NSNumber)?.doubleValue { teacherValidation = loss }
            guard let s = (object["stage"] as? NSNumber)?.intValue else { continue }
            var stage = stages[s] ?? Stage()
            if let loss = (object["val_loss"] as? NSNumber)?.doubleValue { stage.validation = loss }
            if let layers = object["layer_losses"] as? [String: Any] {
                for (layer, value) in layers { if let v = (value as? NSNumber)?.doubleValue { stage.series["layer " + layer, default: []].append((step, v)) } }
            }
            for name in ["kd", "data", "total"] {
                if let v = (object[name] as? NSNumber)?.doubleValue { stage.series[name, default: []].append((step, v)) }
            }
            if let rate = (object["tokens_per_s"] as? NSNumber)?.doubleValue { stage.speed.append((step, rate)) }
            stages[s] = stage
        }
        guard !stages.values.allSatisfy({ $0.series.isEmpty }) else { throw CommandLineError.metricsEmpty(path: path) }
        let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
        let titles = [1: "stage 1 matrix distance", 2: "stage 2 hidden-state distance", 3: "stage 3 loss"]
        var panels: [Chart.Panel] = [], lines: [String] = []
        if let teacherValidation { lines.append(String(format: "teacher validation loss %.4f", teacherValidation)) }
        for s in stages.keys.sorted() {
            let stage = stages[s]!
            let names = stage.series.keys.sorted { order($0) < order($1) }
            panels.append(Chart.Panel(label: titles[s] ?? "stage \(s)",
                                      series: names.enumerated().map { (i, name) in (name, colors[i % colors.count], stage.series[name]!) }))
            let rate = stage.speed.map(\.1).reduce(0, +) / Double(max(stage.speed.count, 1))
            lines.append("stage \(s)" + (stage.validation.map { String(format: ": student validation loss %.4f", $0) } ?? "")
                         + String(format: ", %.0f tokens/s", rate))
            for name in names {
                let points = stage.series[name]!
                let values = String(format: "%10.5g → %-10.5g", points.first!.1, points.last!.1)
                lines.append("  " + name.padding(toLength: 8, withPad: " ", startingAt: 0) + values + " " + sparkline(points.map(\.1))
                             + "   steps \(Int(points.first!.0))–\(Int(points.last!.0))")
            }
        }
        let speed = stages.keys.sorted().flatMap { stages[$0]!.speed }
        let svg = Chart.svg(title: "Tessera distillation \(URL(fileURLWithPath: runDirectory).lastPathComponent)",
                            panels: panels + [Chart.Panel(label: "tokens/s", series: [("tokens/s", "#2ca02c", speed)])])
        try svg.write(toFile: runDirectory + "/report.svg", atomically: true, encoding: .utf8)
        let html = """
            <!doctype html><html><head><meta charset="utf-8"><title>Tessera distillation report</title></head>
            <body style="font-family: sans-serif"><h1>\(Chart.escape(runDirectory))</h1>\(svg)<pre>\(Chart.escape(lines.joined(separator: "\n")))</pre></body></html>
            """
        try html.write(toFile: runDirectory + "/report.html", atomically: true, encoding: .utf8)
        print(lines.joined(separator: "\n"))
        print("wrote \(runDirectory)/report.svg and \(runDirectory)/report.html")
    }

    /// Layers in numeric order, then kd, data, total.
    static func order(_ name: String) -> Int {
        if name.hasPrefix("layer "), let layer = Int(name.dropFirst(6)) { return layer }
        return 10_000 + (["kd", "data", "total"].firstIndex(of: name) ?? 3)
    }

    /// Values as block characters, low to high, at most 40 (evenly sampled).
    static func sparkline(_ values: [Double]) -> String {
        let blocks = Array("▁▂▃▄▅▆▇█")
        let count = min(values.count, 40)
        let sampled = (0..<count).map { values[count == 1 ? 0 : $0 * (values.count - 1) / (count - 1)] }
        guard let low = sampled.min(), let high = sampled.max(), high > low else { return String(repeating: blocks[0], count: count) }
        return String(sampled.map { blocks[min(7, Int(($0 - low) / (high - low) * 8))] })
    }
}
