"""A1111 1.10.1's option keys and defaults (modules/shared_options.py), written out, and what each means here.

tests/data/a1111_options.json is derived from that file (its commit noted there); a test checks these keys and
defaults against it.

HONOURED keys are stored per user and change generation; REFUSED keys change generation in A1111 in ways we
do not implement, so setting them away from the default is a 422 naming them; every other key is server-level
(paths, UI, training, memory management): accepted, not stored, and reported read-only.
"""

DEFAULTS = {
    # saving-images
    "samples_save": True, "samples_format": "png", "samples_filename_pattern": "", "save_images_add_number": True,
    "grid_save": True, "grid_format": "png", "grid_extended_filename": False, "grid_only_if_multiple": True,
    "grid_prevent_empty_spots": False, "grid_zip_filename_pattern": "", "n_rows": -1, "font": "",
    "grid_text_active_color": "#000000", "grid_text_inactive_color": "#999999", "grid_background_color": "#ffffff",
    "enable_pnginfo": True, "save_txt": False, "save_images_before_face_restoration": False,
    "save_images_before_highres_fix": False, "save_images_before_color_correction": False, "save_mask": False,
    "save_mask_composite": False, "jpeg_quality": 80, "webp_lossless": False, "export_for_4chan": True,
    "img_downscale_threshold": 4.0, "target_side_length": 4000, "img_max_size_mp": 200,
    "use_original_name_batch": True, "use_upscaler_name_as_suffix": False, "save_selected_only": True,
    "save_init_img": False, "save_images_replace_action": "Replace", "save_write_log_csv": True,
    "notification_audio": True, "notification_volume": 100, "temp_dir": "", "clean_temp_dir_at_start": False,
    "save_incomplete_images": False,
    # saving-paths
    "outdir_samples": "", "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images", "outdir_extras_samples": "outputs/extras-images",
    "outdir_grids": "", "outdir_txt2img_grids": "outputs/txt2img-grids", "outdir_img2img_grids": "outputs/img2img-grids",
    "outdir_save": "log/images", "outdir_init_images": "outputs/init-images",
    # saving-to-dirs
    "save_to_dirs": True, "grid_save_to_dirs": True, "use_save_to_dirs_for_ui": False,
    "directories_filename_pattern": "[date]", "directories_max_prompt_words": 8,
    # upscaling
    "ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8, "realesrgan_enabled_models": ["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"],
    "dat_enabled_models": ["DAT x2", "DAT x3", "DAT x4"], "DAT_tile": 192, "DAT_tile_overlap": 8,
    "upscaler_for_img2img": None, "set_scale_by_when_changing_upscaler": False,
    # face-restoration
    "face_restoration": False, "face_restoration_model": "CodeFormer", "code_former_weight": 0.5,
    "face_restoration_unload": False,
    # system
    "auto_launch_browser": "Local", "show_warnings": False, "show_gradio_deprecation_warnings": True,
    "memmon_poll_rate": 8, "samples_log_stdout": False, "multiple_tqdm": True, "print_hypernet_extra": False,
    "list_hidden_files": True, "disable_mmap_load_safetensors": False, "hide_ldm_prints": True,
    "enable_console_prompts": False, "enable_upscale_progressbar": True, "dump_stacks_on_signal": False,
    # profiler
    "profiling_enable": False, "profiling_activities": ["CPU"], "profiling_record_shapes": True,
    "profiling_profile_memory": True, "profiling_with_stack": True, "profiling_filename": "trace.json",
    # API
    "api_enable_requests": True, "api_forbid_local_requests": True, "api_useragent": "",
    # training
    "unload_models_when_training": False, "pin_memory": False, "save_optimizer_state": False,
    "save_training_settings_to_txt": True, "dataset_filename_word_regex": "", "dataset_filename_join_string": " ",
    "training_image_repeats_per_epoch": 1, "training_write_csv_every": 500, "training_xattention_optimizations": False,
    "training_enable_tensorboard": False, "training_tensorboard_save_images": False,
    "training_tensorboard_flush_every": 120,
    # sd
    "sd_model_checkpoint": None, "sd_checkpoints_limit": 1, "sd_checkpoints_keep_in_cpu": True,
    "sd_checkpoint_cache": 0, "sd_unet": "Automatic", "enable_quantization": False, "emphasis": "Original",
    "enable_batch_seeds": True, "comma_padding_backtrack": 20, "sdxl_clip_l_skip": False,
    "CLIP_stop_at_last_layers": 1, "upcast_attn": False, "randn_source": "GPU", "tiling": False,
    "hires_fix_refiner_pass": "second pass", "enable_reloading_ui_scripts": False,
    # sdxl
    "sdxl_crop_top": 0, "sdxl_crop_left": 0, "sdxl_refiner_low_aesthetic_score": 2.5,
    "sdxl_refiner_high_aesthetic_score": 6.0,
    # sd3
    "sd3_enable_t5": False,
    # vae
    "sd_vae_checkpoint_cache": 0, "sd_vae": "Automatic", "sd_vae_overrides_per_model_preferences": True,
    "auto_vae_precision_bfloat16": False, "auto_vae_precision": True, "sd_vae_encode_method": "Full",
    "sd_vae_decode_method": "Full",
    # img2img
    "inpainting_mask_weight": 1.0, "initial_noise_multiplier": 1.0, "img2img_extra_noise": 0.0,
    "img2img_color_correction": False, "img2img_fix_steps": False, "img2img_background_color": "#ffffff",
    "img2img_editor_height": 720, "img2img_sketch_default_brush_color": "#ffffff",
    "img2img_inpaint_mask_brush_color": "#ffffff", "img2img_inpaint_sketch_default_brush_color": "#ffffff",
    "return_mask": False, "return_mask_composite": False, "img2img_batch_show_results_limit": 32,
    "overlay_inpaint": True,
    # optimizations
    "cross_attention_optimization": "Automatic", "s_min_uncond": 0.0, "s_min_uncond_all": False,
    "token_merging_ratio": 0.0, "token_merging_ratio_img2img": 0.0, "token_merging_ratio_hr": 0.0,
    "pad_cond_uncond": False, "pad_cond_uncond_v0": False, "persistent_cond_cache": True, "batch_cond_uncond": True,
    "fp8_storage": "Disable", "cache_fp16_weight": False, "auto_backcompat": True, "use_downcasted_alpha_bar": False,
    "refiner_switch_by_sample_steps": False,
    # compatibility
    "use_old_emphasis_implementation": False, "use_old_karras_scheduler_sigmas": False,
    "no_dpmpp_sde_batch_determinism": False, "use_old_hires_fix_width_height": False,
    "hires_fix_use_firstpass_conds": False,
    "use_old_scheduling": False,
    # interrogate
    "interrogate_keep_models_in_memory": False, "interrogate_return_ranks": False, "interrogate_clip_num_beams": 1,
    "interrogate_clip_min_length": 24, "interrogate_clip_max_length": 48, "interrogate_clip_dict_limit": 1500,
    "interrogate_clip_skip_categories": [], "interrogate_deepbooru_score_threshold": 0.5, "deepbooru_sort_alpha": True,
    "deepbooru_use_spaces": True, "deepbooru_escape": True, "deepbooru_filter_tags": "",
    # extra networks
    "extra_networks_show_hidden_directories": True, "extra_networks_dir_button_function": False,
    "extra_networks_hidden_models": "When searched",
    "extra_networks_default_multiplier": 1.0, "extra_networks_card_width": 0, "extra_networks_card_height": 0,
    "extra_networks_card_text_scale": 1.0, "extra_networks_card_show_desc": True,
    "extra_networks_card_description_is_html": False, "extra_networks_card_order_field": "Path",
    "extra_networks_card_order": "Ascending", "extra_networks_tree_view_style": "Dirs",
    "extra_networks_tree_view_default_enabled": True, "extra_networks_tree_view_default_width": 180,
    "extra_networks_add_text_separator": " ", "ui_extra_networks_tab_reorder": "",
    "textual_inversion_print_at_load": False, "textual_inversion_add_hashes_to_infotext": True,
    "sd_hypernetwork": "None",
    # ui
    "localization": "None", "gradio_theme": "Default", "gradio_themes_cache": True, "gallery_height": "",
    "return_grid": True, "do_not_show_images": False, "send_seed": True, "send_size": True, "js_modal_lightbox": True,
    "js_modal_lightbox_initially_zoomed": True, "js_modal_lightbox_gamepad": False,
    "js_modal_lightbox_gamepad_repeat": 250, "show_progress_in_title": True, "samplers_in_dropdown": True,
    "dimensions_and_batch_together": True, "keyedit_precision_attention": 0.1, "keyedit_precision_extra": 0.05,
    "keyedit_delimiters": ".,\\/!?%^*;:{}=`~() ",
    "keyedit_delimiters_whitespace": ["Tab", "Carriage Return", "Line Feed"], "keyedit_move": True,
    "quicksettings_list": ["sd_model_checkpoint"],
    "ui_tab_order": [], "hidden_tabs": [], "ui_reorder_list": [], "hires_fix_show_sampler": False,
    "hires_fix_show_prompts": False, "disable_token_counters": False, "include_styles_into_token_counters": True,
    "compact_prompt_box": False, "sd_checkpoint_dropdown_use_short": False, "txt2img_settings_accordion": False,
    "img2img_settings_accordion": False, "interrupt_after_current": True, "sd_webui_modal_lightbox_icon_opacity": 1,
    "sd_webui_modal_lightbox_toolbar_opacity": 0.9, "open_dir_button_choice": "Subdirectory",
    "prevent_screen_sleep_during_generation": True,
    # infotext
    "add_model_hash_to_info": True, "add_model_name_to_info": True, "add_user_name_to_info": False,
    "add_version_to_infotext": True, "disable_weights_auto_swap": True, "infotext_styles": "Apply if any",
    "add_vae_name_to_info": True, "add_vae_hash_to_info": True, "infotext_skip_pasting": [],
    # live previews
    "show_progressbar": True, "live_previews_enable": True, "live_previews_image_format": "png",
    "show_progress_grid": True, "show_progress_every_n_steps": 10, "show_progress_type": "Approx NN",
    "live_preview_allow_lowvram_full": False, "live_preview_content": "Prompt", "live_preview_refresh_period": 1000,
    "live_preview_fast_interrupt": False, "js_live_preview_in_modal_lightbox": False,
    # sampler parameters
    "hide_samplers": [], "eta_ddim": 0.0, "eta_ancestral": 1.0, "ddim_discretize": "uniform", "s_churn": 0.0,
    "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0, "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0,
    "eta_noise_seed_delta": 0, "always_discard_next_to_last_sigma": False, "sgm_noise_multiplier": False,
    "skip_early_cond": 0.0, "beta_dist_alpha": 0.6, "beta_dist_beta": 0.6, "sd_noise_schedule": "Default",
    "uni_pc_variant": "bh1",
    "uni_pc_skip_type": "time_uniform", "uni_pc_order": 3, "uni_pc_lower_order_final": True,
    # postprocessing
    "postprocessing_enable_in_main_ui": [], "postprocessing_operation_order": [], "upscaling_max_images_in_cache": 5,
    "postprocessing_disable_in_extras": [], "postprocessing_existing_caption_action": "Ignore",
    # hidden
    "disabled_extensions": [], "disable_all_extensions": "none", "restore_config_state_file": "",
    "sd_checkpoint_hash": "",
    # the ControlNet extension's (handlers.generation.controlnet reads it)
    "control_net_no_detectmap": False,
}

# Stored per user; each changes what a generation does (handlers.generation reads them).
HONOURED = {
    # A1111's DeepDanbooru tagging (handlers.generation.deepbooru)
    "interrogate_deepbooru_score_threshold", "deepbooru_sort_alpha", "deepbooru_use_spaces", "deepbooru_escape",
    "deepbooru_filter_tags",  # and interrogate_return_ranks, interrogate_keep_models_in_memory (below)
    "sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "eta_noise_seed_delta", "eta_ddim",
    "eta_ancestral", "s_churn", "s_tmin", "s_tmax", "s_noise", "tiling", "samples_format", "jpeg_quality",
    "webp_lossless", "return_grid", "grid_save", "grid_only_if_multiple", "enable_pnginfo", "sd_vae_decode_method",
    "show_progress_every_n_steps", "live_previews_enable", "add_model_hash_to_info", "add_model_name_to_info",
    "control_net_no_detectmap", "overlay_inpaint", "face_restoration", "face_restoration_model", "code_former_weight",
    # A1111's ExtraNetworkHypernet: `sd_hypernetwork` adds <hypernet:name:extra_networks_default_multiplier>
    "sd_hypernetwork", "extra_networks_default_multiplier",
    # the CLIP interrogator (handlers.generation.interrogate)
    "interrogate_keep_models_in_memory", "interrogate_return_ranks", "interrogate_clip_num_beams",
    "interrogate_clip_min_length", "interrogate_clip_max_length", "interrogate_clip_dict_limit",
    "interrogate_clip_skip_categories",
}

# Change generation in A1111, not implemented here: only their default is accepted (with its reason).
REFUSED = {
    "randn_source": "the noise is drawn on the CPU generator (A1111's `CPU` source) so images match on any device",
    "upscaler_for_img2img": "img2img resizes with Lanczos only",
    "save_images_before_face_restoration": "images are saved once, after face restoration",
    "enable_quantization": "not implemented", "emphasis": "prompts are encoded as plain text (no (word:1.2))",
    "comma_padding_backtrack": "not implemented", "upcast_attn": "not implemented",
    "sdxl_crop_top": "not implemented", "sdxl_crop_left": "not implemented",
    "sdxl_refiner_low_aesthetic_score": "not implemented", "sdxl_refiner_high_aesthetic_score": "not implemented",
    "sd_vae_encode_method": "encoding is always the full VAE", "inpainting_mask_weight": "not implemented",
    "initial_noise_multiplier": "not implemented", "img2img_extra_noise": "not implemented",
    "img2img_color_correction": "not implemented", "img2img_fix_steps": "not implemented",
    "img2img_background_color": "transparent inputs are flattened onto white", "return_mask": "not implemented",
    "return_mask_composite": "not implemented", "s_min_uncond": "not implemented",
    "token_merging_ratio": "not implemented", "token_merging_ratio_img2img": "not implemented",
    "token_merging_ratio_hr": "not implemented", "pad_cond_uncond": "not implemented",
    "use_old_emphasis_implementation": "not implemented", "use_old_karras_scheduler_sigmas": "not implemented",
    "use_old_hires_fix_width_height": "not implemented", "hires_fix_use_firstpass_conds": "not implemented",
    "use_old_scheduling": "not implemented", "n_rows": "grids are laid out as square as possible",
    "grid_prevent_empty_spots": "not implemented",
    "sigma_min": "not implemented", "sigma_max": "not implemented", "rho": "not implemented",
    "always_discard_next_to_last_sigma": "not implemented", "uni_pc_variant": "not implemented",
    "uni_pc_skip_type": "not implemented", "uni_pc_order": "not implemented",
    "uni_pc_lower_order_final": "not implemented", "ddim_discretize": "not implemented",
    "add_version_to_infotext": "the infotext always carries `Version: easel`",
    "add_user_name_to_info": "not implemented", "no_dpmpp_sde_batch_determinism": "not implemented",
    "enable_batch_seeds": "not implemented", "sd_unet": "not implemented",
    # A1111 1.9 / 1.10 additions that change pictures
    "sdxl_clip_l_skip": "CLIP skip is not applied to SDXL here", "hires_fix_refiner_pass": "a refiner with hires "
    "fix is not supported here", "s_min_uncond_all": "not implemented", "pad_cond_uncond_v0": "not implemented",
    "fp8_storage": "weights stay in the checkpoint's precision", "use_downcasted_alpha_bar": "not implemented",
    "refiner_switch_by_sample_steps": "not implemented", "sgm_noise_multiplier": "not implemented",
    "skip_early_cond": "not implemented", "beta_dist_alpha": "the Beta schedule uses alpha = beta = 0.6",
    "beta_dist_beta": "the Beta schedule uses alpha = beta = 0.6", "sd_noise_schedule": "not implemented",
    "add_vae_name_to_info": "the infotext names no VAE here", "add_vae_hash_to_info": "the infotext names no VAE here",
}
# randn_source is honoured in the sense that its one value here is reported truthfully.
SERVED_DEFAULTS = {"randn_source": "CPU"}
