using Dtrain.Data;

using Dtrain.Tests.Support;

namespace Dtrain.Tests.Data;

public sealed class ReaderTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    static ReadOptions Jsonl(string onError = "fail") => new() { Format = "jsonl", LabelField = "label", OnError = onError };
    static ReadOptions Csv(string onError = "fail") => new() { Format = "csv", LabelField = "label", OnError = onError };

    static IReadOnlyList<TextRecord> Read(string path, ReadOptions options) => DatasetReader.Read(path, options, new DataReportBuilder());

    static DataFormatException Fails(string path, ReadOptions options, int line)
    {
        var e = Assert.Throws<DataFormatException>(() => Read(path, options));
        Assert.Equal(path, e.File);
        Assert.Equal(line, e.Line);
        return e;
    }

    // ------------------------------------------------------------------ JSONL

    [Fact]
    public void Jsonl_reads_text_and_labels_with_their_line_numbers_ignoring_blank_lines()
    {
        var path = dir.Write("a.jsonl", "{\"text\":\"hello\",\"label\":\"greet\"}\n\n   \r\n{\"label\":\"bye\",\"text\":\"see you\",\"extra\":[1]}\r\n");
        var records = Read(path, Jsonl());
        Assert.Equal([new TextRecord("hello", "greet", path, 1), new TextRecord("see you", "bye", path, 4)], records);
    }

    [Fact]
    public void Jsonl_label_may_be_a_string_an_integer_or_a_boolean()
    {
        var path = dir.Write("a.jsonl", "{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\",\"label\":3}\n{\"text\":\"c\",\"label\":-7}\n{\"text\":\"d\",\"label\":true}\n{\"text\":\"e\",\"label\":false}\n");
        Assert.Equal(["x", "3", "-7", "true", "false"], Read(path, Jsonl()).Select(r => r.Label));
    }

    [Fact]
    public void Jsonl_malformed_line_names_file_and_line()
    {
        var path = dir.Write("a.jsonl", "{\"text\":\"ok\",\"label\":\"a\"}\n{\"text\":\"broken\",\"label\":\"a\"\n{\"text\":\"ok\",\"label\":\"a\"}\n");
        var e = Fails(path, Jsonl(), 2);
        Assert.Contains("malformed JSON", e.Problem);
    }

    [Fact]
    public void Jsonl_line_that_is_not_an_object_is_an_error()
    {
        var path = dir.Write("a.jsonl", "{\"text\":\"ok\",\"label\":\"a\"}\n[\"text\",\"a\"]\n");
        Assert.Contains("expected a JSON object, found an array", Fails(path, Jsonl(), 2).Problem);
    }

    [Fact]
    public void Jsonl_missing_field_names_the_field_and_line()
    {
        var path = dir.Write("a.jsonl", "{\"text\":\"ok\",\"label\":\"a\"}\n{\"text\":\"ok\",\"label\":\"a\"}\n{\"txt\":\"typo\",\"label\":\"a\"}\n");
        Assert.Equal("missing field 'text'", Fails(path, Jsonl(), 3).Problem);
        var noLabel = dir.Write("b.jsonl", "{\"text\":\"no label\"}\n");
        Assert.Equal("missing field 'label'", Fails(noLabel, Jsonl(), 1).Problem);
    }

    [Theory]
    [InlineData("{\"text\":42,\"label\":\"a\"}", "field 'text' must be a string, found the number 42")]
    [InlineData("{\"text\":null,\"label\":\"a\"}", "field 'text' must be a string, found null")]
    [InlineData("{\"text\":\"ok\",\"label\":1.5}", "field 'label' must be a string, integer or boolean, found the number 1.5")]
    [InlineData("{\"text\":\"ok\",\"label\":{\"k\":1}}", "field 'label' must be a string, integer or boolean, found an object")]
    [InlineData("{\"text\":\"  \",\"label\":\"a\"}", "field 'text' is empty")]
    [InlineData("{\"text\":\"ok\",\"label\":\"\"}", "field 'label' is empty")]
    public void Jsonl_field_of_the_wrong_type_or_empty_names_the_field(string line, string problem)
    {
        var path = dir.Write("a.jsonl", "{\"text\":\"fine\",\"label\":\"a\"}\n" + line + "\n");
        Assert.Equal(problem, Fails(path, Jsonl(), 2).Problem);
    }

    [Fact]
    public void Jsonl_skip_policy_drops_bad_records_and_counts_them_with_examples()
    {
        var lines = new List<string>();
        for (var i = 1; i <= 10; i++) lines.Add(i % 2 == 0 ? "{\"text\":\"good\",\"label\":\"a\"}" : "not json");
        var path = dir.Write("a.jsonl", string.Join("\n", lines));
        var report = new DataReportBuilder();
        var records = DatasetReader.Read(path, Jsonl("skip"), report);
        Assert.Equal([2, 4, 6, 8, 10], records.Select(r => r.Line));
        var r = report.ToReport();
        Assert.Equal(5, r.Read);
        Assert.Equal(5, r.Skipped);
        Assert.Equal(5, r.SkippedExamples.Count);
        Assert.StartsWith($"{path}:1: malformed JSON", r.SkippedExamples[0]);
        Assert.StartsWith($"{path}:9: malformed JSON", r.SkippedExamples[4]);
    }

    [Fact]
    public void Skip_policy_keeps_at_most_five_examples()
    {
        var path = dir.Write("a.jsonl", string.Concat(Enumerable.Repeat("{}\n", 8)) + "{\"text\":\"t\",\"label\":\"a\"}\n");
        var report = new DataReportBuilder();
        DatasetReader.Read(path, Jsonl("skip"), report);
        Assert.Equal(8, report.Skipped);
        Assert.Equal(5, report.ToReport().SkippedExamples.Count);
    }

    [Fact]
    public void File_whose_records_are_all_skipped_has_no_records()
    {
        var path = dir.Write("a.jsonl", "nope\n{}\n");
        var e = Fails(path, Jsonl("skip"), 0);
        Assert.StartsWith("no records", e.Problem);
    }

    [Fact]
    public void Language_model_reading_needs_no_label_field()
    {
        var path = dir.Write("a.jsonl", "{\"text\":\"one\"}\n{\"text\":\"two\"}\n");
        Assert.Equal(["one", "two"], Read(path, new ReadOptions { Format = "jsonl" }).Select(r => r.Text));
    }

    // ------------------------------------------------------------------ all formats

    [Theory]
    [InlineData("text")]
    [InlineData("jsonl")]
    [InlineData("csv")]
    public void Empty_or_whitespace_file_is_reported_as_empty_with_line_zero(string format)
    {
        foreach (var content in new[] { "", " \n\t\r\n" })
        {
            var path = dir.Write($"empty.{format}", content);
            Assert.Equal("file is empty", Fails(path, new ReadOptions { Format = format }, 0).Problem);
        }
    }

    [Fact]
    public void Missing_file_is_reported_as_not_found()
    {
        var path = Path.Combine(dir.Path, "nope.jsonl");
        Assert.Equal("file not found", Fails(path, Jsonl(), 0).Problem);
    }

    [Theory]
    [InlineData("text")]
    [InlineData("jsonl")]
    [InlineData("csv")]
    public void Invalid_utf8_is_reported_with_its_line_and_byte_offset(string format)
    {
        var head = format switch
        {
            "csv" => "text,label\nok,a\n",
            "jsonl" => "{\"text\":\"ok\",\"label\":\"a\"}\n{\"text\":\"ok\",\"label\":\"a\"}\n",
            _ => "line one\nline two\n",
        };
        var prefix = System.Text.Encoding.UTF8.GetBytes(head + "caf");
        byte[] bytes = [.. prefix, 0xE9, .. "\"\n"u8]; // Latin-1 é
        var path = dir.WriteBytes($"bad.{format}", bytes);
        var e = Fails(path, new ReadOptions { Format = format, LabelField = format == "text" ? null : "label" }, 3);
        Assert.Equal($"invalid UTF-8 byte sequence at byte offset {prefix.Length}", e.Problem);
    }

    [Fact]
    public void Invalid_utf8_offsets_count_the_byte_order_mark()
    {
        byte[] bytes = [0xEF, 0xBB, 0xBF, .. "ab\n"u8, 0xC3, 0x28];
        var path = dir.WriteBytes("bad.txt", bytes);
        var e = Fails(path, new ReadOptions { Format = "text" }, 2);
        Assert.Equal("invalid UTF-8 byte sequence at byte offset 6", e.Problem);
    }

    [Fact]
    public void Byte_order_mark_is_stripped()
    {
        var path = dir.WriteBytes("bom.csv", [0xEF, 0xBB, 0xBF, .. "text,label\nhi,a\n"u8]);
        Assert.Equal([new TextRecord("hi", "a", path, 2)], Read(path, Csv()));
    }

    [Fact]
    public void Text_file_is_one_record_on_line_one_with_lf_line_ends()
    {
        var path = dir.Write("book.txt", "Chapter 1\r\nCall me Ishmael.\r\n\r\nThe end.\n");
        Assert.Equal([new TextRecord("Chapter 1\nCall me Ishmael.\n\nThe end.\n", null, path, 1)], Read(path, new ReadOptions { Format = "text" }));
    }

    // ------------------------------------------------------------------ over-long records

    [Fact]
    public void Overlength_truncate_cuts_the_record_and_counts_it()
    {
        var path = dir.Write("a.jsonl", "{\"text\":\"0123456789\",\"label\":\"a\"}\n{\"text\":\"short\",\"label\":\"b\"}\n");
        var report = new DataReportBuilder();
        var records = DatasetReader.Read(path, Jsonl() with { MaxLength = 6, Overlength = "truncate" }, report);
        Assert.Equal(["012345", "short"], records.Select(r => r.Text));
        Assert.Equal((2, 0, 1), (report.Read, report.Skipped, report.Truncated));
    }

    [Fact]
    public void Overlength_truncation_never_splits_a_surrogate_pair()
    {
        var path = dir.Write("a.csv", "text,label\nabcde😀f,a\n");
        var records = Read(path, Csv() with { MaxLength = 6 });
        Assert.Equal("abcde", records[0].Text);
    }

    [Fact]
    public void Overlength_skip_drops_the_record_and_counts_it()
    {
        var path = dir.Write("a.csv", "text,label\n0123456789,a\nshort,b\n");
        var report = new DataReportBuilder();
        var records = DatasetReader.Read(path, Csv() with { MaxLength = 6, Overlength = "skip" }, report);
        Assert.Equal(["short"], records.Select(r => r.Text));
        Assert.Equal((1, 1, 0), (report.Read, report.Skipped, report.Truncated));
        Assert.Equal($"{path}:2: record is 10 characters long, more than max_length 6", report.ToReport().SkippedExamples.Single());
    }

    [Fact]
    public void Overlength_error_names_the_line_and_length_even_when_skipping_malformed_records()
    {
        var path = dir.Write("a.jsonl", "{\"text\":\"short\",\"label\":\"b\"}\n{\"text\":\"0123456789\",\"label\":\"a\"}\n");
        var e = Fails(path, Jsonl("skip") with { MaxLength = 6, Overlength = "error" }, 2);
        Assert.Equal("record is 10 characters long, more than max_length 6", e.Problem);
    }

    // ------------------------------------------------------------------ CSV

    [Fact]
    public void Csv_reads_quoted_fields_escapes_and_embedded_newlines_with_record_start_lines()
    {
        const string csv = "id,text,label\r\n1,plain,a\r\n2,\"with, comma and \"\"quotes\"\"\",b\r\n3,\"two\r\nlines\nthree\",a\r\n\r\n4,last,\"b\"";
        var path = dir.Write("a.csv", csv);
        var records = Read(path, Csv());
        Assert.Equal(
            [
                new TextRecord("plain", "a", path, 2),
                new TextRecord("with, comma and \"quotes\"", "b", path, 3),
                new TextRecord("two\r\nlines\nthree", "a", path, 4),
                new TextRecord("last", "b", path, 8),
            ],
            records);
    }

    [Fact]
    public void Csv_much_larger_than_the_parsers_buffer_reads_every_record_across_its_refills()
    {
        // The file's text reaches the parser a buffer (64K characters) at a time: with records of every length from 1 to
        // 40 characters, doubled quotes, CRLFs inside and after quotes and trailing commas land on the refills' edges.
        var csv = new System.Text.StringBuilder("text,label,note\r\n");
        var expected = new List<TextRecord>();
        var path = Path.Combine(dir.Path, "big.csv");
        var line = 2;
        for (var i = 0; i < 60_000; i++)
        {
            var pad = new string((char)('a' + i % 26), 1 + i % 40);
            var text = i % 3 == 0 ? $"{pad}\"q\"\r\n{i}" : $"{pad},{i}";
            csv.Append('"').Append(text.Replace("\"", "\"\"", StringComparison.Ordinal)).Append("\",").Append(i % 5).Append(i % 2 == 0 ? ",\r\n" : ",n\n");
            expected.Add(new TextRecord(text, (i % 5).ToString(System.Globalization.CultureInfo.InvariantCulture), path, line));
            line += i % 3 == 0 ? 2 : 1;
        }
        Assert.True(csv.Length > 20 * 65536, $"the file ({csv.Length} characters) spans many buffers");
        File.WriteAllText(path, csv.ToString());
        Assert.Equal(expected, Read(path, Csv()));
    }

    [Fact]
    public void Csv_missing_column_lists_the_columns_of_the_header()
    {
        var path = dir.Write("a.csv", "body,category,id\nhello,a,1\n");
        var e = Fails(path, Csv() with { TextField = "text" }, 1);
        Assert.Equal("no column 'text' in header; columns are: body, category, id", e.Problem);
    }

    [Fact]
    public void Csv_row_with_the_wrong_number_of_fields_names_its_line()
    {
        var path = dir.Write("a.csv", "text,label\n\"multi\nline\",a\nok,b\ntoo,many,fields\n");
        Assert.Equal("expected 2 fields as in the header, found 3", Fails(path, Csv(), 5).Problem);
    }

    [Fact]
    public void Csv_skip_policy_drops_rows_with_the_wrong_field_count_and_counts_them()
    {
        var path = dir.Write("a.csv", "text,label\nok,a\nonly one field\nok,b\nx,y,z\n");
        var report = new DataReportBuilder();
        var records = DatasetReader.Read(path, Csv("skip"), report);
        Assert.Equal([2, 4], records.Select(r => r.Line));
        Assert.Equal(2, report.Skipped);
        Assert.Equal($"{path}:3: expected 2 fields as in the header, found 1", report.ToReport().SkippedExamples[0]);
    }

    [Fact]
    public void Csv_unterminated_quote_names_the_line_where_the_record_started()
    {
        var path = dir.Write("a.csv", "text,label\nok,a\n\"never closed,b\nmore\nlines\n");
        var e = Fails(path, Csv("skip"), 3);
        Assert.Contains("unterminated quoted field", e.Problem);
    }

    [Fact]
    public void Csv_text_after_a_closing_quote_is_a_malformed_record()
    {
        var path = dir.Write("a.csv", "text,label\n\"quoted\"junk,a\n");
        Assert.Contains("after a closing quote", Fails(path, Csv(), 2).Problem);
    }

    [Fact]
    public void Csv_empty_label_is_an_error()
    {
        var path = dir.Write("a.csv", "text,label\nfine,a\nno label,\n");
        Assert.Equal("field 'label' is empty", Fails(path, Csv(), 3).Problem);
    }

    [Fact]
    public void Csv_with_only_a_header_has_no_records()
    {
        var path = dir.Write("a.csv", "text,label\r\n");
        Assert.Equal("no records", Fails(path, Csv(), 0).Problem);
    }
}
