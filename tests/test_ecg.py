"""ECG readers: round-trips of every format (written with the format's own library or documented structure),
each bad input refused with a one-line message naming the file, and the quality flags."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

import ecgflowcmr
from ecgflowcmr.canonical import FS, LEADS, N_SAMPLES
from ecgflowcmr.errors import InputError
from ecgflowcmr.io import ecg as ecg_mod
from ecgflowcmr.io import ecg_decoders
from ecgflowcmr.io.ecg import ecg_quality, inspect_ecg, read_ecg, write_wfdb
from ecgflowcmr.io.formats import sniff
from test_phase import synthetic_ecg

MIMIC_ORDER = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")


@pytest.fixture(scope="module")
def clean() -> tuple[np.ndarray, np.ndarray]:
    """A 10 s, 500 Hz synthetic 12-lead ECG (mV, canonical order) and its true R-peaks."""
    return synthetic_ecg(seed=11, heart_rate=72.0)


# ------------------------------------------------------------------------------------ format writers


def ukb_xml(counts: np.ndarray, names: list[str], *, resolution: float = 5.0, fs: int = 500) -> bytes:
    """CardioSoft XML as UK Biobank field 20205 ships it (ISO-8859-1; median beats before the strip)."""
    def waves(block: np.ndarray) -> str:
        return "".join(
            f'    <WaveformData lead="{n}">\n\t\t{",".join(str(int(v)) for v in row)}\n\t</WaveformData>\n'
            for n, row in zip(names, block)
        )

    return (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n<CardiologyXML>\n'
        "  <ObservationType>RestECG</ObservationType>\n"
        "  <PatientInfo><PID>1000001</PID><Name>Zoë Müller</Name></PatientInfo>\n"
        "  <RestingECGMeasurements>\n    <MedianSamples>\n"
        f'    <NumberOfLeads>{len(names)}</NumberOfLeads>\n    <SampleRate units="Hz">{fs}</SampleRate>\n'
        f'    <ChannelSampleCountTotal>600</ChannelSampleCountTotal>\n    <Resolution units="uVperLsb">{resolution}</Resolution>\n'
        f"{waves(counts[:, :600] * 0)}    </MedianSamples>\n"
        "    <Interpretation><Diagnosis><DiagnosisText>Sinus rhythm</DiagnosisText></Diagnosis></Interpretation>\n"
        "  </RestingECGMeasurements>\n  <StripData>\n"
        f'    <NumberOfLeads>{len(names)}</NumberOfLeads>\n    <SampleRate units="Hz">{fs}</SampleRate>\n'
        f"    <ChannelSampleCountTotal>{counts.shape[1]}</ChannelSampleCountTotal>\n"
        f'    <Resolution units="uVperLsb">{resolution}</Resolution>\n{waves(counts)}  </StripData>\n</CardiologyXML>\n'
    ).encode("iso-8859-1")


def muse_xml(counts: np.ndarray, names: list[str], *, uv_per_bit: float = 4.88, fs: int = 500) -> bytes:
    """GE MUSE RestingECG XML: a Median waveform then the Rhythm one, base64 little-endian int16 per lead."""
    def lead_data(name: str, row: np.ndarray) -> str:
        b64 = base64.encodebytes(row.astype("<i2").tobytes()).decode()  # wrapped at 76 columns, as MUSE does
        return (
            f"<LeadData><LeadByteCountTotal>{2 * row.size}</LeadByteCountTotal><LeadTimeOffset>0</LeadTimeOffset>"
            f"<LeadSampleCountTotal>{row.size}</LeadSampleCountTotal>"
            f"<LeadAmplitudeUnitsPerBit>{uv_per_bit}</LeadAmplitudeUnitsPerBit>"
            "<LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits><LeadHighLimit>32767</LeadHighLimit>"
            f"<LeadLowLimit>-32768</LeadLowLimit><LeadID>{name}</LeadID><LeadOffsetFirstSample>0</LeadOffsetFirstSample>"
            "<FirstSampleBaseline>0</FirstSampleBaseline><LeadSampleSize>2</LeadSampleSize><LeadOff>FALSE</LeadOff>"
            f"<BaselineSway>FALSE</BaselineSway><WaveFormData>{b64}</WaveFormData></LeadData>\n"
        )

    def waveform(kind: str, block: np.ndarray) -> str:
        return (
            f"<Waveform><WaveformType>{kind}</WaveformType><WaveformStartTime>0</WaveformStartTime>"
            f"<NumberofLeads>{len(names)}</NumberofLeads><SampleType>CONTINUOUS_SAMPLES</SampleType>"
            f"<SampleBase>{fs}</SampleBase><SampleExponent>0</SampleExponent><HighPassFilter>16</HighPassFilter>"
            "<LowPassFilter>150</LowPassFilter><ACFilter>60</ACFilter>\n"
            + "".join(lead_data(n, row) for n, row in zip(names, block)) + "</Waveform>\n"
        )

    return (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n<!DOCTYPE RestingECG SYSTEM "restecg.dtd">\n<RestingECG>\n'
        "<MuseInfo><MuseVersion>9.0.9.18167</MuseVersion></MuseInfo>\n"
        "<PatientDemographics><PatientID>42</PatientID></PatientDemographics>\n"
        + waveform("Median", counts[:, :600] // 2) + waveform("Rhythm", counts) + "</RestingECG>\n"
    ).encode("iso-8859-1")


def dicom_ecg(path: Path, counts: np.ndarray, names: list[str], *, uv_per_count: float = 2.5, fs: float = 500.0):
    """A 12-lead ECG Waveform Storage file written with pydicom: a MEDIAN BEAT group, then the RHYTHM group
    (multiplexed int16, channel sensitivity in µV)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG Waveform Storage

    def group(label: str, block: np.ndarray) -> Dataset:
        item = Dataset()
        item.MultiplexGroupLabel = label
        item.WaveformOriginality = "ORIGINAL"
        item.NumberOfWaveformChannels = block.shape[0]
        item.NumberOfWaveformSamples = block.shape[1]
        item.SamplingFrequency = fs
        channels = []
        for k, name in enumerate(names):
            source = Dataset()
            source.CodeValue, source.CodingSchemeDesignator = f"5.6.3-9-{k + 1}", "SCPECG"
            source.CodeMeaning = name
            unit = Dataset()
            unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "uV", "UCUM", "microvolt"
            ch = Dataset()
            ch.ChannelSourceSequence = [source]
            ch.ChannelSensitivity = uv_per_count
            ch.ChannelSensitivityUnitsSequence = [unit]
            ch.ChannelSensitivityCorrectionFactor = 1
            ch.ChannelBaseline = 0
            ch.WaveformBitsStored = 16
            channels.append(ch)
        item.ChannelDefinitionSequence = channels
        item.WaveformBitsAllocated = 16
        item.WaveformSampleInterpretation = "SS"
        item.WaveformData = np.ascontiguousarray(block.T).astype("<i2").tobytes()  # C1S1, C2S1, …
        return item

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, "ECG"
    ds.WaveformSequence = [group("MEDIAN BEAT", counts[:, :600]), group("RHYTHM", counts)]
    ds.save_as(path, enforce_file_format=True)


def _counts(signal_mv: np.ndarray, uv_per_count: float) -> np.ndarray:
    return np.round(signal_mv * 1000.0 / uv_per_count).astype(np.int64)


# ------------------------------------------------------------------------------------------ round trips


def test_public_api_reexport():
    assert ecgflowcmr.read_ecg is read_ecg


def test_wfdb_round_trip_mimic_order_and_microvolts(tmp_path, clean):
    """Written by wfdb.wrsamp in MIMIC-IV-ECG's lead order (aVF before aVL) and in µV: sig_name and units win."""
    import wfdb

    signal, _ = clean
    order = [LEADS.index(n) for n in MIMIC_ORDER]
    wfdb.wrsamp("rec", fs=500, units=["uV"] * 12, sig_name=list(MIMIC_ORDER), p_signal=signal[order].T * 1000.0,
                fmt=["16"] * 12, adc_gain=[1.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))  # fmt: skip
    assert sniff(tmp_path / "rec.hea") == "wfdb"
    for name in ("rec", "rec.hea", "rec.dat"):
        ecg = read_ecg(tmp_path / name)
        assert ecg.signal.shape == (12, N_SAMPLES) and ecg.signal.dtype == np.float32
        np.testing.assert_allclose(ecg.signal, signal, atol=0.6e-3)  # 1 µV quantisation
        assert ecg.leads_found == list(MIMIC_ORDER) and ecg.format == "wfdb"
        assert ecg.source_fs == 500 and ecg.valid_samples == N_SAMPLES
    assert not [f for f in ecg.flags if "resampled" in f or "padded" in f]


def test_write_wfdb_round_trip_is_exact(tmp_path, clean):
    signal, _ = clean
    write_wfdb(tmp_path / "r", signal)
    np.testing.assert_allclose(read_ecg(tmp_path / "r").signal, np.round(signal * 1000) / 1000, atol=1e-6)


def test_ukb_xml_round_trip_resolution_and_case(tmp_path, clean):
    """Counts × the file's Resolution (µV/LSB): 5 and 2.5 give the same mV; lead names in mixed case."""
    signal, _ = clean
    names = ["I", "ii", "III", "AVR", "avl", "aVF", "V1", "v2", "V3", "V4", "V5", "V6"]
    for resolution in (5.0, 2.5):
        path = tmp_path / f"1000001_20205_2_0_{resolution}.xml"
        path.write_bytes(ukb_xml(_counts(signal, resolution), names, resolution=resolution))
        assert sniff(path) == "ukb_xml"
        ecg = read_ecg(path)
        np.testing.assert_allclose(ecg.signal, signal, atol=resolution / 2000 + 1e-6)
        assert ecg.leads_found == names and ecg.format == "ukb_xml"


def test_muse_xml_12_lead_round_trip(tmp_path, clean):
    signal, _ = clean
    path = tmp_path / "muse.xml"
    path.write_bytes(muse_xml(_counts(signal, 4.88), list(LEADS)))
    assert sniff(path) == "muse_xml"
    ecg = read_ecg(path)
    np.testing.assert_allclose(ecg.signal, signal, atol=4.88 / 2000 + 1e-6)
    assert not [f for f in ecg.flags if "derived" in f]


def test_muse_xml_8_lead_derives_limb_leads(tmp_path, clean):
    """MUSE stores I II V1–V6; III aVR aVL aVF = Einthoven/Goldberger of I and II (handled, flagged)."""
    signal, _ = clean
    stored = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    path = tmp_path / "muse8.xml"
    path.write_bytes(muse_xml(_counts(signal[[LEADS.index(n) for n in stored]], 4.88), stored))
    ecg = read_ecg(path)
    i, ii = ecg.signal[0].astype(np.float64), ecg.signal[1].astype(np.float64)
    np.testing.assert_allclose(ecg.signal[2], ii - i, atol=1e-5)
    np.testing.assert_allclose(ecg.signal[3], -(i + ii) / 2, atol=1e-5)
    np.testing.assert_allclose(ecg.signal[4], i - ii / 2, atol=1e-5)
    np.testing.assert_allclose(ecg.signal[5], ii - i / 2, atol=1e-5)
    kept = [LEADS.index(n) for n in stored]
    np.testing.assert_allclose(ecg.signal[kept], signal[kept], atol=4.88 / 2000 + 1e-6)
    assert "derived III aVR aVL aVF from I II (8-lead muse_xml)" in ecg.flags
    assert inspect_ecg(path)["flags"] == ["derived III aVR aVL aVF from I II (8-lead muse_xml)"]


def test_muse_xml_utf16_export(tmp_path, clean):
    """Some MUSE exports are UTF-16 with a byte-order mark: sniffed and parsed all the same."""
    signal, _ = clean
    text = muse_xml(_counts(signal, 4.88), list(LEADS)).decode("iso-8859-1").replace("ISO-8859-1", "UTF-16")
    path = tmp_path / "muse16.xml"
    path.write_bytes(text.encode("utf-16"))
    assert sniff(path) == "muse_xml"
    np.testing.assert_allclose(read_ecg(path).signal, signal, atol=4.88 / 2000 + 1e-6)


def test_dicom_ecg_round_trip(tmp_path, clean):
    """Written with pydicom (Waveform Storage, multiplexed int16, µV sensitivity); the RHYTHM group is read."""
    signal, _ = clean
    names = ["Lead I (Einthoven)", "Lead II", "Lead III", "Lead aVR", "Lead aVL", "Lead aVF",
             "Lead V1", "Lead V2", "Lead V3", "Lead V4", "Lead V5", "Lead V6"]  # fmt: skip
    path = tmp_path / "ecg.dcm"
    dicom_ecg(path, _counts(signal, 2.5), names)
    assert sniff(path) == "dicom_ecg"
    ecg = read_ecg(path)
    np.testing.assert_allclose(ecg.signal, signal, atol=1.25e-3 + 1e-6)
    assert ecg.leads_found == names and ecg.format == "dicom_ecg"


def test_dicom_ecg_from_pydicom_test_data():
    """pydicom's bundled real 12-lead ECG (1000 Hz): read, resampled to 500 Hz, flagged."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("waveform_ecg.dcm")
    if path is None:
        pytest.skip("pydicom test data not installed")
    ecg = read_ecg(path)
    assert ecg.signal.shape == (12, N_SAMPLES) and np.isfinite(ecg.signal).all()
    assert ecg.source_fs == 1000 and "resampled 1000→500 Hz" in ecg.flags
    assert 0.2 < np.abs(ecg.signal).max() < 5.0  # mV, not µV


def test_dicom_image_is_not_an_ecg(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.Modality, ds.Rows, ds.Columns = meta, "MR", 2, 2
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    path = tmp_path / "frame.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputError, match="not an ECG") as err:
        read_ecg(path)
    assert str(path) in str(err.value)


def test_numpy_round_trip_both_layouts(tmp_path, clean):
    signal, _ = clean
    np.save(tmp_path / "a.npy", signal)
    np.save(tmp_path / "b.npy", signal.T.copy())
    a, b = read_ecg(tmp_path / "a.npy", fs=500), read_ecg(tmp_path / "b.npy", fs=500)
    np.testing.assert_array_equal(a.signal, signal)
    np.testing.assert_array_equal(b.signal, signal)
    assert any("lead order assumed canonical" in f for f in a.flags)
    assert any("transposed" in f for f in b.flags)
    np.savez(tmp_path / "c.npz", ecg=signal[[LEADS.index(n) for n in MIMIC_ORDER]], fs=np.float64(500),
             leads=np.array(MIMIC_ORDER))  # fmt: skip
    c = read_ecg(tmp_path / "c.npz")
    np.testing.assert_array_equal(c.signal, signal)
    assert not any("lead order assumed" in f for f in c.flags)


def test_250_hz_resampled_with_amplitude_and_timing(tmp_path):
    """A 250 Hz record becomes 500 Hz: a 3 Hz sine keeps its amplitude and phase (never stretched)."""
    fs, f0 = 250, 3.0
    t = np.arange(int(10 * fs)) / fs
    leads = np.stack([(0.5 + 0.05 * k) * np.sin(2 * np.pi * f0 * t + 0.3 * k) for k in range(12)])
    write_wfdb(tmp_path / "slow", leads, fs=fs)
    ecg = read_ecg(tmp_path / "slow")
    assert ecg.source_fs == 250 and ecg.source_samples == 2500
    assert "resampled 250→500 Hz" in ecg.flags and ecg.valid_samples == N_SAMPLES
    t500 = np.arange(N_SAMPLES) / FS
    expected = np.stack([(0.5 + 0.05 * k) * np.sin(2 * np.pi * f0 * t500 + 0.3 * k) for k in range(12)])
    inner = slice(50, N_SAMPLES - 50)
    np.testing.assert_allclose(ecg.signal[:, inner], expected[:, inner], atol=5e-3)
    report = inspect_ecg(tmp_path / "slow.hea")
    assert report["sampling_rate_hz"] == 250 and report["samples"] == 2500 and report["duration_s"] == 10.0


def test_7_second_record_padded_and_12_second_cropped(tmp_path, clean):
    signal, _ = clean
    write_wfdb(tmp_path / "short", signal[:, :3500])
    ecg = read_ecg(tmp_path / "short")
    assert "padded 7.00 s→10 s (zeros after sample 3500)" in ecg.flags
    assert ecg.valid_samples == 3500 and not ecg.signal[:, 3500:].any()
    np.testing.assert_allclose(ecg.signal[:, :3500], signal[:, :3500], atol=0.6e-3)
    long = np.concatenate([signal, signal[:, :1000]], axis=1)
    np.save(tmp_path / "long.npy", long)
    cropped = read_ecg(tmp_path / "long.npy", fs=500)
    assert "cropped 12.00 s→10 s (first 10 s kept)" in cropped.flags
    np.testing.assert_array_equal(cropped.signal, signal)


def test_short_nan_gap_repaired_openly(tmp_path, clean):
    signal, _ = clean
    bad = signal.astype(np.float64)
    bad[4, 1000:1006] = np.nan  # 12 ms
    np.save(tmp_path / "gap.npy", bad)
    ecg = read_ecg(tmp_path / "gap.npy", fs=500)
    assert np.isfinite(ecg.signal).all()
    assert "interpolated 6 NaN samples in lead aVL (gaps ≤ 12 ms)" in ecg.flags
    np.testing.assert_allclose(ecg.signal[4, 1000:1006], np.linspace(bad[4, 999], bad[4, 1006], 8)[1:-1], atol=1e-5)


def test_wfdb_invalid_samples_are_nan_not_zero(tmp_path, clean):
    """WFDB's −32768 sentinel comes back as NaN; a long run is refused, not zero-filled."""
    import wfdb

    signal, _ = clean
    digital = np.round(signal.T * 1000).astype(np.int64)
    digital[2000:2300, 7] = -32768
    wfdb.wrsamp("gap", fs=500, units=["mV"] * 12, sig_name=list(LEADS), d_signal=digital, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))  # fmt: skip
    with pytest.raises(InputError, match="lead V2 has 300 NaN") as err:
        read_ecg(tmp_path / "gap")
    assert str(tmp_path / "gap") in str(err.value)


@pytest.mark.parametrize("fmt", ["16", "212"])
def test_wfdb_reader_matches_rdrecord(tmp_path, clean, fmt):
    """Our numpy path for format 16 (and rdrecord's for the rest) give exactly what wfdb.rdrecord gives:
    baseline, gain, µV units, the invalid-sample sentinel as NaN, header comments."""
    import wfdb

    signal, _ = clean
    digital = np.round(signal.T * 400).astype(np.int64) + 17
    digital[100:103, 4] = -32768 if fmt == "16" else -2048
    wfdb.wrsamp("r", fs=500, units=["uV"] * 6 + ["mV"] * 6, sig_name=list(LEADS), d_signal=digital, fmt=[fmt] * 12,
                adc_gain=[0.4] * 6 + [400.0] * 6, baseline=[17] * 12, comments=["age: 63"],
                write_dir=str(tmp_path))  # fmt: skip
    rec = wfdb.rdrecord(str(tmp_path / "r"))
    expected = rec.p_signal.T * np.array([1e-3] * 6 + [1.0] * 6)[:, None]
    decoded = ecg_decoders._decode_wfdb(tmp_path / "r")
    np.testing.assert_array_equal(np.isnan(decoded.signal), np.isnan(expected))
    np.testing.assert_allclose(decoded.signal, expected, rtol=1e-12, equal_nan=True)
    assert decoded.names == list(LEADS) and decoded.fs == 500
    ecg = read_ecg(tmp_path / "r.hea")
    assert "interpolated 3 NaN samples in lead aVL (gaps ≤ 6 ms)" in ecg.flags


def test_wfdb_truncated_dat(tmp_path, clean):
    write_wfdb(tmp_path / "t", clean[0])
    dat = tmp_path / "t.dat"
    dat.write_bytes(dat.read_bytes()[:50_000])
    with pytest.raises(InputError, match="truncated") as err:
        read_ecg(tmp_path / "t")
    assert str(tmp_path / "t") in str(err.value)


# ------------------------------------------------------------------------------------------- bad input


def _bad_files(tmp: Path, signal: np.ndarray) -> dict[str, tuple[Path, str, dict]]:
    """name → (path, expected message fragment, read_ecg kwargs)."""
    counts = _counts(signal, 5.0)
    cases: dict[str, tuple[Path, str, dict]] = {}

    def put(name: str, data: bytes, match: str, **kwargs) -> None:
        path = tmp / name
        path.write_bytes(data)
        cases[name] = (path, match, kwargs)

    def npy(name: str, arr: np.ndarray, match: str) -> None:
        np.save(tmp / name, arr)
        cases[name] = (tmp / name, match, {"fs": 500})

    put("empty.xml", b"", "empty")
    put("empty.hea", b"", "empty")
    full = ukb_xml(counts, list(LEADS))
    put("truncated.xml", full[: len(full) // 2], "malformed or truncated XML")
    put("laughs.xml", b'<?xml version="1.0"?>\n<!DOCTYPE CardiologyXML [\n <!ENTITY lol "lol">\n'
        b' <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n'
        b' <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">\n]>\n'
        b"<CardiologyXML><StripData>&lol3;</StripData></CardiologyXML>\n", "EntitiesForbidden")
    put("unknown_lead.xml", ukb_xml(counts, [*LEADS[:11], "X7"]), "unknown lead name 'X7'")
    put("duplicate_lead.xml", ukb_xml(counts, ["I", "II", "III", "aVR", "AVR", *LEADS[5:]]), "duplicate lead aVR")
    put("missing_lead.xml", ukb_xml(counts[:11], list(LEADS[:11])), "missing lead(s) V6")
    put("no_resolution.xml", ukb_xml(counts, list(LEADS)).replace(b' units="uVperLsb"', b""), "no Resolution")
    put("bad_units.xml", ukb_xml(counts, list(LEADS)).replace(b"uVperLsb", b"furlongPerLsb"), "unknown amplitude unit")
    put("count_mismatch.xml", ukb_xml(counts, list(LEADS)).replace(b"<ChannelSampleCountTotal>5000",
        b"<ChannelSampleCountTotal>6000"), "ChannelSampleCountTotal")  # fmt: skip
    put("non_numeric.xml", ukb_xml(counts, list(LEADS)).replace(b"\n\t</WaveformData>\n  </StripData>",
        b",x7\n\t</WaveformData>\n  </StripData>"), "lead 'V6': non-numeric sample")  # fmt: skip
    put("rate_mismatch.xml", ukb_xml(counts, list(LEADS)), "the file says 500 Hz but fs=250", fs=250)
    nan = signal.astype(np.float64)
    nan[3, 100:200] = np.nan
    npy("nan.npy", nan, "lead aVR has 100 NaN/invalid samples, longest gap 200 ms")
    flat = signal.copy()
    flat[8] = 0.05
    npy("flat.npy", flat, "flat lead(s) V3")
    npy("microvolts.npy", signal * 1000, "implausible amplitude")
    npy("three_seconds.npy", signal[:, :1500], "shorter than the 5 s minimum")
    npy("wrong_shape.npy", signal[:8], "expected (12, N) or (N, 12)")
    np.save(tmp / "no_fs.npy", signal)
    cases["no_fs.npy"] = (tmp / "no_fs.npy", "pass fs=", {})
    put("garbage.dcm", b"\x00" * 300, "DICOM")
    return cases


BAD_CASES = ["empty.xml", "empty.hea", "truncated.xml", "laughs.xml", "unknown_lead.xml", "duplicate_lead.xml",
             "missing_lead.xml", "no_resolution.xml", "bad_units.xml", "count_mismatch.xml", "rate_mismatch.xml",
             "non_numeric.xml",
             "nan.npy", "flat.npy", "microvolts.npy", "three_seconds.npy", "wrong_shape.npy", "no_fs.npy",
             "garbage.dcm"]  # fmt: skip


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, clean):
    return _bad_files(tmp_path_factory.mktemp("bad"), clean[0])


@pytest.mark.parametrize("name", BAD_CASES)
def test_bad_input_is_one_line_naming_the_file(bad_files, name):
    path, match, kwargs = bad_files[name]
    with pytest.raises(InputError) as err:
        read_ecg(path, **kwargs)
    message = str(err.value)
    assert message.startswith(str(path)) or message.startswith(str(path.with_suffix(""))), message
    assert match in message and "\n" not in message


def test_bad_cases_table_is_complete(bad_files):
    assert sorted(bad_files) == sorted(BAD_CASES)


def test_muse_doctype_accepted_but_entities_refused(tmp_path, clean):
    """Real MUSE files carry <!DOCTYPE RestingECG SYSTEM "restecg.dtd">: accepted; an entity declaration is not."""
    signal, _ = clean
    data = muse_xml(_counts(signal, 4.88), list(LEADS))
    assert b"<!DOCTYPE RestingECG SYSTEM" in data
    evil = data.replace(b'"restecg.dtd">', b'"restecg.dtd" [<!ENTITY x SYSTEM "file:///etc/passwd">]>')
    evil = evil.replace(b"<PatientID>42</PatientID>", b"<PatientID>&x;</PatientID>")
    (tmp_path / "evil.xml").write_bytes(evil)
    with pytest.raises(InputError, match="XML refused"):
        read_ecg(tmp_path / "evil.xml")


# --------------------------------------------------------------------------------------------- quality


def test_quality_clean_synthetic_has_no_flags(clean):
    signal, true = clean
    q = ecg_quality(signal)
    assert q["flags"] == [], q
    assert q["n_beats"] == len(true)
    assert q["heart_rate_bpm"] == pytest.approx(72.0, rel=0.06)
    assert q["einthoven_residual"] < 0.05 and q["goldberger_residual"] < 0.05


@pytest.mark.parametrize(("a", "b", "residual"), [("I", "II", "einthoven"), ("aVL", "aVF", "augmented"),
                                                  ("aVR", "V1", "goldberger")])  # fmt: skip
def test_quality_swapped_leads(clean, a, b, residual):
    signal, _ = clean
    swapped = signal.copy()
    swapped[[LEADS.index(a), LEADS.index(b)]] = signal[[LEADS.index(b), LEADS.index(a)]]
    q = ecg_quality(swapped)
    assert q[f"{residual}_residual"] > ecg_mod.SWAP_RESIDUAL
    assert any("possible swapped leads" in f for f in q["flags"])


def test_quality_flags_each_problem(clean):
    signal, _ = clean
    x = signal.astype(np.float64)
    x[6] = np.clip(x[6], None, np.percentile(x[6], 97))  # V1 saturates at its top
    x[9] = 0.0  # V4
    x[2, :3] = np.nan
    q = ecg_quality(x)
    assert q["clipped_leads"] == ["V1"] and q["flat_leads"] == ["V4"] and q["nonfinite_samples"] == 3
    text = " | ".join(q["flags"])
    assert "clipping in lead(s) V1" in text and "flat lead(s) V4" in text and "3 non-finite samples" in text
    assert any("implausible amplitude" in f for f in ecg_quality(signal * 20)["flags"])
    slow, _ = synthetic_ecg(seed=3, heart_rate=24.0)
    assert "heart rate 24 bpm outside 30–150 bpm" in ecg_quality(slow)["flags"]
    fast, _ = synthetic_ecg(seed=3, heart_rate=170.0)
    assert "heart rate 170 bpm outside 30–150 bpm" in ecg_quality(fast)["flags"]
    few = ecg_quality(signal, rpeaks=np.array([100, 600, 1100]))
    assert few["n_beats"] == 3 and "3 beats detected (< 4)" in few["flags"]


def test_inspect_report(tmp_path, clean):
    signal, true = clean
    write_wfdb(tmp_path / "ok", signal)
    report = inspect_ecg(tmp_path / "ok")
    json.dumps(report)  # JSON-serialisable
    assert report["format"] == "wfdb" and report["leads"] == list(LEADS) and report["readable"]
    assert report["rpeak_count"] == len(true) and report["quality"] == [] and report["flags"] == []
    assert report["heart_rate_bpm"] == pytest.approx(72.0, rel=0.06)
    flat = signal.copy()
    flat[10] = 0.0
    write_wfdb(tmp_path / "flat", flat)
    report = inspect_ecg(tmp_path / "flat")
    json.dumps(report)
    assert not report["readable"] and "flat lead(s) V5" in report["error"]
    assert any("flat lead(s) V5" in f for f in report["quality"])


def test_write_wfdb_bytes_equal_wfdb_wrsamp(tmp_path: Path) -> None:
    """Our direct writer produces exactly the files wfdb's own writer produces."""
    import wfdb

    rng = np.random.default_rng(3)
    signal = rng.normal(0, 0.5, size=(12, N_SAMPLES))
    signal[0, :3] = [0.0005, -0.0005, 0.0015]  # rounding halves the same way
    write_wfdb(tmp_path / "ours", signal)
    digital = np.round(signal.T * 1000.0).astype(np.int16).astype(np.int64)
    (tmp_path / "ref").mkdir()
    wfdb.wrsamp("ours", fs=FS, units=["mV"] * 12, sig_name=list(LEADS), d_signal=digital, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path / "ref"))
    for ext in (".hea", ".dat"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / "ref" / f"ours{ext}").read_bytes()
