"""The studio's Gradio layout: components (each with an elem_id the browser test uses) wired to `Studio`.

Left: project, storyboard editor and shot table, settings, Generate / Stop and progress.
Right: the preview (newest segment while generating, then the film), per-shot preview and regeneration,
the memory inspector (project history or an uploaded video) and export.
"""

from __future__ import annotations

import gradio as gr

from ...film.footage import DEFAULT_STILL_SECONDS, EXPORT_GENERATED_ONLY, EXPORT_WITH_FOOTAGE
from .job_view import POLL_SECONDS, StudioJobs
from .storyboard_view import TABLE_HEADERS, TABLE_TYPES, WHOLE_FILM
from ..options import MAX_SEED
from .callbacks import DEFAULT_PROJECT, MAX_STEPS, Studio

CSS = """
.pfp-status progress { width: 100%; height: 14px; }
.pfp-status .pfp-bar { display: grid; grid-template-columns: 9em 1fr; align-items: center; gap: .5em; }
.pfp-status p { margin: .3em 0 0 0; }
#true-frame img, #recalled-frame img, #error-map img, #return-first img, #return-recalled img, #return-frame img { image-rendering: pixelated; }
#model-info { border-left: 4px solid var(--color-accent); padding-left: .6em; }
"""

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="slate",
                       font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "Consolas", "monospace"])  # no web fonts: nothing is fetched

EXAMPLE = "# one shot per line: TIME: prompt\n0s: a red striped circle in front of the brick wall\n" \
          "6s: a green dotted square in front of the gravel path\nend: 12s\n"

JOB = "model"  # generation, recall and export share one queue slot group: the studio's lock refuses a 2nd job


def build_demo(studio: Studio) -> gr.Blocks:
    m = studio.model
    with gr.Blocks(title="PFP Studio", analytics_enabled=False, delete_cache=(3600, 7200)) as demo:
        gr.Markdown("# PFP Studio\nStoryboard → one long, consistent video, with a memory you can inspect.")
        gr.Markdown(studio.model_markdown(), elem_id="model-info")
        with gr.Row(equal_height=False):
            # ------------------------------------------------------------------ left: write and generate
            with gr.Column(scale=5, min_width=360):
                with gr.Row():
                    project = gr.Dropdown(choices=studio.projects() or [DEFAULT_PROJECT], value=DEFAULT_PROJECT,
                                          allow_custom_value=True, label="Project", scale=3, elem_id="project-name",
                                          info="letters, digits, space . _ - (saved under the projects folder)")
                    open_btn = gr.Button("Open / new", scale=1, elem_id="project-open")
                project_msg = gr.Markdown(elem_id="project-msg")
                with gr.Row():
                    preset = gr.Dropdown(choices=studio.presets(), value=None, label="Storyboard preset", scale=3,
                                         elem_id="preset")
                    preset_btn = gr.Button("Load preset", scale=1, elem_id="preset-load")
                storyboard = gr.Textbox(value=EXAMPLE, lines=8, max_lines=30, label="Storyboard",
                                        info="one shot per line: `12s: prompt` (also `1:05:` or `1m05s:`); "
                                             "add, remove or reorder shots by editing lines; `end: 30s` sets the length",
                                        elem_id="storyboard", interactive=False)  # editable once the page has loaded
                sb_status = gr.Markdown(elem_id="storyboard-status")
                with gr.Accordion("Start from footage (optional)", open=False, elem_id="footage-panel"):
                    gr.Markdown("A video, an image or several stills become the history before the first shot: the "
                                "storyboard continues them and remembers them. Storyboard times count from the "
                                "footage's end.")
                    with gr.Row():
                        footage_upload = gr.File(label="Footage: one video, or images (at most 2 GB)", scale=3,
                                                 file_count="multiple", file_types=["video", "image"], type="filepath",
                                                 elem_id="footage-upload")
                        still_s = gr.Number(value=DEFAULT_STILL_SECONDS, minimum=0.125, maximum=60, scale=1,
                                            label="Seconds per still", elem_id="footage-still-seconds")
                    footage_info = gr.Markdown(elem_id="footage-info")
                    with gr.Row(visible=False, elem_id="footage-restore-offer") as restore_offer:
                        restore_btn = gr.Button("Restore its project", variant="primary", elem_id="footage-restore")
                        as_footage_btn = gr.Button("Use its frames as footage", elem_id="footage-use")
                    footage_preview = gr.Video(label="Prepared history: what the model sees", interactive=False,
                                               height=200, loop=True, elem_id="footage-preview")
                    footage_remove = gr.Button("Remove the footage", size="sm", elem_id="footage-remove")
                shot_table = gr.Dataframe(headers=TABLE_HEADERS, datatype=TABLE_TYPES,
                                          interactive=False, label="Shots", elem_id="shot-table", wrap=True,
                                          column_widths=["6%", "11%", "11%", "8%", "50%", "14%"])
                save_btn = gr.Button("Save storyboard to project", size="sm", elem_id="save-storyboard")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="seed")
                    steps = gr.Slider(1, MAX_STEPS, value=m.sampler.steps, step=1, label="Denoising steps",
                                      elem_id="steps")
                with gr.Row():
                    profile = gr.Dropdown(choices=studio.profile_choices(),
                                          value=studio.profile if studio.profile in studio.profile_choices() else "auto",
                                          interactive=studio.runtime is not None, label="Runtime profile",
                                          info=None if studio.runtime else "CPU only: runtime profiles not installed",
                                          elem_id="profile")
                    gr.Textbox(value=f"{m.video.width}×{m.video.height} at {m.video.fps} fps, "
                                     f"segments ≤ {studio.segment_seconds:g} s",
                               label="Resolution / fps (set by the model)", interactive=False, elem_id="video-spec")
                gr.Textbox(value=studio.memory_rate_text(), label="Memory rate (φ)", interactive=False,
                           elem_id="memory-rate")
                with gr.Row():
                    gen_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                status = gr.HTML(elem_id="gen-status")
                queue_md = gr.Markdown(elem_id="job-queue")

            # ------------------------------------------------------------------ right: watch, inspect, export
            with gr.Column(scale=7, min_width=420):
                preview = gr.Video(label="Preview", autoplay=True, loop=True, interactive=False, height=320,
                                   elem_id="preview")
                with gr.Accordion("Shots: preview and regenerate", open=True, elem_id="shots-panel"):
                    with gr.Row():
                        shot = gr.Dropdown(choices=[], label="Shot", scale=3, elem_id="shot-select")
                        shot_play = gr.Button("Preview shot", scale=1, elem_id="shot-play")
                    shot_video = gr.Video(label="Shot preview", interactive=False, height=200, autoplay=True, elem_id="shot-video")
                    with gr.Row():
                        regen_prompt = gr.Textbox(label="Prompt for this shot (edit to change it)", scale=3,
                                                  elem_id="regen-prompt")
                        regen_seed = gr.Number(value=1, precision=0, minimum=0, maximum=MAX_SEED, label="New seed",
                                               scale=1, elem_id="regen-seed")
                    regen_btn = gr.Button("Regenerate this shot (keeps earlier shots)", elem_id="regenerate")
                with gr.Accordion("Memory inspector: what the model remembers", open=True, elem_id="inspector"):
                    gr.Markdown("Scrub the history: the frame at that time is recalled from the compressed memory "
                                "alone and compared with the true frame.")
                    with gr.Row():
                        at = gr.Slider(0, 1, value=0, step=0.125, label="Time in the history (s)", interactive=False,
                                       scale=4, elem_id="inspect-time")
                        recall_steps = gr.Slider(1, MAX_STEPS, value=m.sampler.steps, step=1, label="Recall steps",
                                                 scale=2, elem_id="recall-steps")
                        recall_btn = gr.Button("Recall", scale=1, elem_id="inspect-run")
                    with gr.Row():
                        truth_img = gr.Image(label="True frame", interactive=False, elem_id="true-frame", height=200)
                        recalled_img = gr.Image(label="Recalled from memory", interactive=False,
                                                elem_id="recalled-frame", height=200)
                        error_img = gr.Image(label="Error heat map", interactive=False, elem_id="error-map", height=200)
                    metrics = gr.Markdown(elem_id="inspect-metrics")
                    with gr.Accordion("Returns: does a returning shot look as it did?", open=False,
                                      elem_id="returns-panel"):
                        gr.Markdown("A shot that repeats an earlier shot's prompt returns to it. Beside its opening "
                                    "frame: the earlier shot's and what the memory recalled of it when the return "
                                    "was drawn.")
                        with gr.Row():
                            return_shot = gr.Dropdown(choices=[], label="Return", scale=3, elem_id="return-shot")
                            return_btn = gr.Button("Compare", scale=1, elem_id="return-compare")
                        with gr.Row():
                            first_img = gr.Image(label="First appearance", interactive=False, elem_id="return-first",
                                                 height=200)
                            remembered_img = gr.Image(label="Recalled from memory", interactive=False,
                                                      elem_id="return-recalled", height=200)
                            returned_img = gr.Image(label="The return", interactive=False,
                                                    elem_id="return-frame", height=200)
                        return_md = gr.Markdown(elem_id="return-metrics")
                    with gr.Accordion("Recall from an uploaded video", open=False, elem_id="upload-panel"):
                        upload = gr.File(label="Video (at most 2 GB)", file_types=["video"], type="filepath",
                                         elem_id="upload-video")
                        upload_msg = gr.Markdown(elem_id="upload-msg")
                        with gr.Row():
                            up_at = gr.Slider(0, 1, value=0, step=0.01, label="Time in the video (s)",
                                              interactive=False, scale=3, elem_id="upload-time")
                            up_hist = gr.Number(value=20, minimum=1, label="History to compress (s, ending at the time)",
                                                scale=2, elem_id="upload-history")
                            up_btn = gr.Button("Recall", scale=1, elem_id="upload-recall")
                with gr.Accordion("Export MP4", open=True, elem_id="export-panel"):
                    with gr.Row():
                        which = gr.Dropdown(choices=[("Whole film", WHOLE_FILM)], value=WHOLE_FILM, label="What",
                                            scale=2, elem_id="export-which")
                        export_footage = gr.Radio([EXPORT_WITH_FOOTAGE, EXPORT_GENERATED_ONLY], value=EXPORT_WITH_FOOTAGE,
                                                  label="Footage (whole film)", scale=2, elem_id="export-footage")
                        crf = gr.Slider(0, 51, value=16, step=1, label="H.264 CRF (lower = better, bigger)", scale=2,
                                        elem_id="crf")
                        export_btn = gr.Button("Export", variant="primary", scale=1, elem_id="export")
                    export_file = gr.File(label="MP4", interactive=False, height=90, elem_id="export-file")
                    export_msg = gr.Markdown(elem_id="export-msg")

        # ---------------------------------------------------------------------- wiring
        open_outputs = [project, storyboard, seed, steps, preview, status, at, project_msg]
        sb_outputs = [shot_table, sb_status, shot, which, regen_prompt]
        storyboard.change(studio.check, storyboard, sb_outputs, queue=False, show_progress="hidden")
        footage_outputs = [footage_preview, footage_info]
        # open and check in one event (an unchanged editor text fires no change event, and the shot controls must
        # still show the open storyboard; checked in a second event, they could show a text no longer in the
        # editor); then show the open project's footage. On page load the editor stays read-only until the
        # project's text and its check are in: text typed earlier was checked, then the load's check (of the text
        # as it was) landed last and emptied the shot table under a valid storyboard
        demo.load(studio.restore_and_check, storyboard, open_outputs + sb_outputs).then(
            lambda: gr.update(interactive=True), None, storyboard, queue=False).then(
            studio.footage.show, project, footage_outputs)
        open_btn.click(studio.open_and_check, [project, storyboard], open_outputs + sb_outputs).then(
            studio.footage.show, project, footage_outputs)
        project.select(studio.open_and_check, [project, storyboard], open_outputs + sb_outputs).then(
            studio.footage.show, project, footage_outputs)
        preset_btn.click(studio.load_preset, preset, storyboard).then(studio.check, storyboard, sb_outputs)
        save_btn.click(studio.save_storyboard, [project, storyboard], project_msg)

        # Generate and Regenerate queue a job in the app's process (pfp_app.app.jobs): it goes on when the page
        # reloads or closes; a timer shows the running job's progress and previews on every open page.
        jobs = StudioJobs(studio).start()
        seen = gr.State(None)  # this page's view of the job it follows
        submit = dict(concurrency_limit=None, show_progress="hidden")
        gen_btn.click(jobs.enqueue_generate, [project, storyboard, seed, steps, profile], [status, seen, project_msg],
                      **submit)
        regen_btn.click(jobs.enqueue_regenerate, [project, storyboard, shot, regen_prompt, regen_seed, steps, profile],
                        [status, seen, project_msg, storyboard], **submit)
        stop_btn.click(jobs.stop, None, project_msg, queue=False)
        gr.Timer(POLL_SECONDS).tick(jobs.poll, seen, [preview, status, at, queue_md, seen], concurrency_limit=None,
                                    show_progress="hidden")
        shot.change(studio.select_shot, [storyboard, shot], regen_prompt, queue=False, show_progress="hidden")
        shot_play.click(studio.shot_preview, [project, shot], shot_video)

        inspect_outputs = [truth_img, recalled_img, error_img, metrics]
        ijob = dict(concurrency_id=JOB, concurrency_limit=2, trigger_mode="always_last")
        at.release(studio.inspector.inspect, [project, at, recall_steps, seed], inspect_outputs, **ijob)
        recall_btn.click(studio.inspector.inspect, [project, at, recall_steps, seed], inspect_outputs, **ijob)
        upload.change(studio.inspector.upload_info, upload, [up_at, upload_msg])
        def recall_upload(path, at_, hist, steps_, seed_, progress=gr.Progress()):
            return studio.inspector.recall_upload(path, at_, hist, steps_, seed_, progress=progress)

        up_btn.click(recall_upload, [upload, up_at, up_hist, recall_steps, seed], inspect_outputs, **ijob)
        return_shot.focus(studio.inspector.return_choices, project, return_shot, queue=False, show_progress="hidden")
        return_btn.click(studio.inspector.compare_return, [project, return_shot, recall_steps, seed],
                         [first_img, remembered_img, returned_img, return_md], **ijob)
        export_btn.click(studio.export, [project, crf, which, export_footage], [export_file, export_msg],
                         concurrency_id=JOB, concurrency_limit=2)

        fjob = dict(concurrency_id=JOB, concurrency_limit=2)
        footage_upload.upload(studio.footage.upload, [project, footage_upload, still_s],
                              footage_outputs + [restore_offer], **fjob).then(studio._slider_of, project, at)
        as_footage_btn.click(studio.footage.use_as_footage, [project, footage_upload, still_s],
                             footage_outputs + [restore_offer], **fjob).then(studio._slider_of, project, at)
        # restoring an export is a job like Generate: its storyboard goes into the editor, the job regenerates
        # the film with the export's own seeds and sampler settings
        restore_btn.click(jobs.enqueue_restore, [project, footage_upload, profile],
                          [storyboard, status, seen, project_msg, restore_offer], **submit)
        footage_remove.click(studio.footage.remove, project, footage_outputs).then(studio._slider_of, project, at)
    return demo


def launch_kwargs() -> dict:
    return dict(theme=THEME, css=CSS)
