// What java.util.Properties.load reads from each file named on the command line, one JSON
// object per line: {"entries": {...}} or {"error": "..."}. Run as a single-file source program
// (`java PropertiesDump.java a.properties b.properties`, JDK 11+) by test_properties_jdk.py,
// which compares it with enstratus_workers.config.properties on the same files.
//
// Files are decoded as UTF-8 and handed over as a Reader, as the Python reader sees text.
// Every character outside printable ASCII is written as \\uXXXX, so lone surrogates survive.

import java.io.StringReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;

public class PropertiesDump {
    public static void main(String[] args) throws Exception {
        StringBuilder out = new StringBuilder();
        for (String name : args) {
            String text = new String(Files.readAllBytes(Path.of(name)), StandardCharsets.UTF_8);
            Properties props = new Properties();
            try {
                props.load(new StringReader(text));
            } catch (IllegalArgumentException e) {
                out.append("{\"error\": ").append(json(String.valueOf(e.getMessage()))).append("}\n");
                continue;
            }
            Map<String, String> sorted = new TreeMap<>();
            for (String key : props.stringPropertyNames()) {
                sorted.put(key, props.getProperty(key));
            }
            out.append("{\"entries\": {");
            String sep = "";
            for (Map.Entry<String, String> e : sorted.entrySet()) {
                out.append(sep).append(json(e.getKey())).append(": ").append(json(e.getValue()));
                sep = ", ";
            }
            out.append("}}\n");
        }
        System.out.print(out);
    }

    static String json(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c >= 0x20 && c < 0x7f) {
                b.append(c);
            } else {
                b.append(String.format("\\u%04x", (int) c));
            }
        }
        return b.append('"').toString();
    }
}
